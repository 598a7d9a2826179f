"""The README's end-to-end walkthrough, verbatim: synthetic fields -> `cytotune crop` -> folds ->
`cytotune search` -> `cytotune explain`, against the same cells rendered as crops directly.

The synth module renders the same cells (same seed, layout and ids) either as crops or tiled
into whole fields, so the crops the finder cuts from the fields can be traced back to their
cells: the test checks they hold the same pixels, that the frozen folds hold the same wells, and
that the same fixed search scores both datasets within 1 point of balanced accuracy.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cytotune.engine.cli import build_parser, main

README = Path(__file__).resolve().parents[3] / "README.md"
HEADING = "### End to end: fields -> crop -> search -> explain"


def walkthrough() -> tuple[list[str], str]:
    """The command lines of the walkthrough's bash blocks and its study file (yaml block)."""
    text = README.read_text()
    assert HEADING in text, f"README has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    lines = [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    studies = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(studies) == 1, "the walkthrough has one study file"
    return lines, studies[0]


def _study_scores(study: Path) -> pd.Series:
    trials = pd.read_parquet(study / "trials.parquet")
    assert len(trials) == 1, trials
    assert trials["status"].iloc[0] == "completed", trials
    folds = pd.read_parquet(study / "folds.parquet")
    assert len(folds) == 3
    return folds.sort_values("fold")["balanced_accuracy"]


def _fold_wells(path: Path) -> list[set[str]]:
    from cytotune.engine.data import CellDataset
    from cytotune.engine.data.folds import load_folds

    ds = CellDataset(path)
    wells = ds.metadata().set_index("cell_id")["well"]
    folds = load_folds(ds.path, "k3-well")
    return [set(wells.loc[list(folds.split(i)[1])]) for i in range(folds.k)]


def _trace_crops(root: Path, size: int) -> tuple[int, int, float]:
    """Each crop traced back to its cell among the direct crops: (crops whose pixels equal that
    cell's pixels wherever the cell lies inside the crop window, crops, mean share of each
    cell's pixels inside its crop window)."""
    import tifffile
    from cytotune.engine.data import CellDataset

    crops, direct = CellDataset(root / "data/e2e-crops"), CellDataset(root / "data/e2e-direct")
    cmeta, dmeta = crops.metadata(), direct.metadata()
    cimages, dimages, dmasks = crops.images(), direct.images(), direct.masks()
    # tile k of a field holds the field's k-th cell in render order (= cell id order)
    members = {f: rows.sort_values("cell_id").index for f, rows in dmeta.groupby("field")}
    same, inside = 0, []
    for r, cell in cmeta.iterrows():
        truth = tifffile.imread(root / "fields/e2e/truth" / f"{cell['field']}.tif")
        cy, cx = int(round(cell["centroid_y"])), int(round(cell["centroid_x"]))
        k = int(truth[cy, cx])  # the crop is centred on its cell's nucleus
        if k == 0:
            continue
        d = members[cell["field"]][k - 1]
        ys, xs = np.nonzero(dmasks[d])  # the cell in its direct crop
        fy, fx = np.nonzero(truth == k)  # the same cell in the field, shifted as a whole
        assert len(fy) == len(ys), "a field cell is its direct crop's cell, moved"
        wy = ys + (fy.min() - ys.min()) - (cy - size // 2)  # in the crop window
        wx = xs + (fx.min() - xs.min()) - (cx - size // 2)
        keep = (wy >= 0) & (wy < size) & (wx >= 0) & (wx < size)
        inside.append(keep.mean())
        same += np.array_equal(cimages[r][:, wy[keep], wx[keep]], dimages[d][:, ys[keep], xs[keep]])
    return same, len(cmeta), float(np.mean(inside))


@pytest.mark.slow
def test_readme_walkthrough_crop_search_explain_matches_direct_crops(
    tmp_path, monkeypatch, capsys, ray_local
):
    commands, study_file = walkthrough()
    monkeypatch.chdir(tmp_path)
    name = study_file.splitlines()[0].lstrip("# ").split(":")[0]
    (tmp_path / name).write_text(study_file)
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "cytotune" and argv[1] == "dashboard":
            build_parser("dashboard").parse_args(argv[1:])  # a server: only its arguments
        elif argv[0] == "cytotune":
            assert main(argv[1:]) == 0, line
        else:
            subprocess.run(line, shell=True, check=True, cwd=tmp_path)
    out = capsys.readouterr().out

    # the crops hold the same cells as the direct crops, and the folds the same wells
    n_cells = 2 * 2 * 3 * 4 * 16
    same, found, inside = _trace_crops(tmp_path, size=32)
    assert found >= 0.99 * n_cells, found
    assert same >= 0.99 * n_cells, (same, found)
    assert inside >= 0.97, inside  # the crops hold (nearly) whole cells
    assert _fold_wells(tmp_path / "data/e2e-crops") == _fold_wells(tmp_path / "data/e2e-direct")

    # the same search scores both within 1 point, well above chance (0.5)
    cropped = _study_scores(tmp_path / "runs/studies/e2e-crops")
    direct = _study_scores(tmp_path / "runs/studies/e2e-direct")
    print(f"balanced accuracy: crops {list(cropped.round(4))}, direct {list(direct.round(4))}")
    assert cropped.mean() >= 0.9, cropped
    assert direct.mean() >= 0.9, direct
    assert abs(cropped.mean() - direct.mean()) <= 0.01, (cropped.mean(), direct.mean())

    # explain on the cropped study: maps, quality table, a model verdict
    explain = tmp_path / "runs/studies/e2e-crops/explain"
    trial_id = pd.read_parquet(tmp_path / "runs/studies/e2e-crops/trials.parquet")["trial_id"][0]
    assert (explain / "maps" / trial_id / "gradcam.parquet").exists()
    assert (explain / "quality.parquet").is_file()
    assert any((explain / "overlays").rglob("*.png"))
    assert "explanation quality" in out
    assert f"model {trial_id}: learned" in out
