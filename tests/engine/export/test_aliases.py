"""Study aliases: promotion, resolution, concurrent writers and readers in several processes,
and promotion gated on the explanation randomisation check."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from cytotune.engine.cli import main
from cytotune.engine.export.aliases import Registry, sanity_status
from cytotune.explainers.job.layout import explain_dir, write_frame

REPO = Path(__file__).resolve().parents[3]

WRITER = textwrap.dedent(
    """
    import sys
    from cytotune.engine.export.aliases import Registry
    study, alias, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    registry = Registry(study)
    for i in range(n):
        registry.promote(alias, f"{alias}-{i}", note=str(i))
    """
)
READER = textwrap.dedent(
    """
    import json, sys, time
    from cytotune.engine.export.aliases import Registry
    registry, seen, deadline = Registry(sys.argv[1]), 0, time.time() + float(sys.argv[2])
    while time.time() < deadline:
        data = registry.read()  # raises on a half-written file
        assert data["format"] == "cytotune-registry"
        for alias, entry in data["aliases"].items():
            assert entry["trial_id"].startswith(alias + "-"), entry
        seen += 1
    print(seen)
    """
)


def _spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_promotions_are_never_lost_and_reads_never_torn(tmp_path):
    writers, promotions = ["champion", "candidate", "baseline", "shadow"], 25
    readers = [_spawn(READER, tmp_path, 4.0) for _ in range(2)]
    procs = [_spawn(WRITER, tmp_path, alias, promotions) for alias in writers]
    outputs = []
    for proc in procs + readers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out)
    assert all(int(out.strip()) > 0 for out in outputs[len(procs) :])  # readers did read
    data = json.loads((tmp_path / "registry.json").read_text())
    assert len(data["history"]) == len(writers) * promotions  # no lost read-modify-write
    for alias in writers:
        assert Registry(tmp_path).resolve(alias) == f"{alias}-{promotions - 1}"
        mine = [h for h in data["history"] if h["alias"] == alias]
        assert [h["trial_id"] for h in mine] == [f"{alias}-{i}" for i in range(promotions)]
        assert [h["previous"] for h in mine] == [None] + [f"{alias}-{i}" for i in range(promotions - 1)]  # fmt: skip
    assert not list(tmp_path.glob(".registry.json.*.tmp"))


def test_alias_names_and_unknown_aliases(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(ValueError, match="not a valid name"):
        registry.promote("../champion", "t1")
    registry.promote("champion", "t1")
    with pytest.raises(ValueError, match="alias 'champoin' is not set.*did you mean 'champion'"):
        registry.resolve("champoin")
    (tmp_path / "registry.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        registry.read()


def _quality(study: Path, rows: list[tuple]) -> None:
    frame = pd.DataFrame(rows, columns=["trial_id", "method", "metric", "mean", "std", "n"])
    write_frame(frame, explain_dir(study) / "quality.parquet")  # as the explain job writes it


@pytest.fixture
def study_copy(cls_study, tmp_path):
    import shutil

    target = tmp_path / "study"
    shutil.copytree(cls_study, target, ignore=shutil.ignore_patterns("tune"))
    (target / "tune").symlink_to(cls_study / "tune")
    return target


def test_promotion_requires_a_passed_randomisation_check(study_copy, capsys):
    base = ["pull", "--study", str(study_copy), "--promote", "champion", "--require-sanity"]
    assert main([*base, "--trial", "backbone"]) == 2
    assert "no explanation quality scores" in capsys.readouterr().err
    _quality(
        study_copy,
        [
            ("backbone", "gradcam", "randomisation_passed", 0.0, 0.0, 32),
            ("backbone", "saliency", "randomisation_passed", 1.0, 0.0, 32),
            ("small_cnn", "gradcam", "randomisation_passed", 1.0, 0.0, 32),
            ("small_cnn", "gradcam", "deletion_auc", 0.31, 0.05, 32),
            ("protopnet", "gradcam", "deletion_auc", 0.2, 0.05, 32),
        ],
    )
    assert main([*base, "--trial", "backbone"]) == 2
    err = capsys.readouterr().err
    assert "trial backbone failed the explanation randomisation check for gradcam" in err
    assert main([*base, "--trial", "protopnet"]) == 2
    assert "no 'randomisation_passed' row for trial protopnet" in capsys.readouterr().err
    assert not (study_copy / "registry.json").exists()

    assert main([*base, "--trial", "small_cnn"]) == 0
    assert "randomisation check passed" in capsys.readouterr().out
    entry = Registry(study_copy).aliases()["champion"]
    assert entry["trial_id"] == "small_cnn"
    assert entry["sanity"]["methods"] == {"gradcam": 1.0}
    assert sanity_status(study_copy, "backbone")["passed"] is False


def test_list_promote_and_pull_by_alias(study_copy, tmp_path, capsys):
    study = str(study_copy)
    assert main(["pull", "--study", study, "--list"]) == 0
    out = capsys.readouterr().out
    assert "aliases: none" in out
    assert all(f in out for f in ("small_cnn", "protopnet"))
    assert main(["pull", "--study", study, "--promote", "candidate", "--rank", "2"]) == 0
    capsys.readouterr()
    assert (
        main(["pull", "--study", study, "--promote", "champion", "--trial", "mhl_attention"]) == 0
    )
    capsys.readouterr()
    assert main(["pull", "--study", study, "--list"]) == 0
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.strip().startswith("champion"))
    assert "-> mhl_attention" in line
    board_line = next(s for s in out.splitlines() if " mhl_attention " in s and "%" not in s and s.strip()[0].isdigit())  # fmt: skip
    assert board_line.rstrip().endswith("champion")
    _quality(study_copy, [("mhl_attention", "gradcam", "randomisation_passed", 1.0, 0.0, 16),
                          ("mhl_attention", "gradcam", "pointing_game", 0.75, 0.1, 16)])  # fmt: skip
    out_dir = tmp_path / "champion"
    assert main(["pull", "--study", study, "--alias", "champion", "--out", str(out_dir)]) == 0
    prov = json.loads((out_dir / "provenance.json").read_text())
    assert prov["trial"]["trial_id"] == "mhl_attention"
    assert prov["trial"]["selected_by"] == "alias 'champion'"
    card = (out_dir / "README.md").read_text()
    assert "| gradcam | pointing_game | 0.7500 | 0.1000 | 16 |" in card
    assert "Model-parameter randomisation sanity check" in card
    assert "- gradcam: passed (rho" not in card  # a legacy row has no rho: the verdict alone
    assert "- gradcam: passed: maps change when the learned weights are destroyed" in card
    assert main(["pull", "--study", study, "--alias", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "alias 'nope' is not set" in capsys.readouterr().err
