"""The single entry point: every subcommand has complete help; errors are one clear line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cytotune.engine.cli import SUBCOMMANDS, main


def test_top_level_help_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "cytotune.engine.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: cytotune {name}" in out
    assert "--" in out


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert "cytotune ingest" in err
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 2
    assert "is not a cytotune dataset" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only user-facing errors become one line: a TypeError from the code is not swallowed."""
    from cytotune.engine.data import info_command

    def broken(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(info_command, "run", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["info", "anything"])


def test_a_wrongly_typed_study_setting_is_still_one_line(tmp_path, capsys):
    """Type errors in the user's study file arrive as StudyError (a ValueError), not TypeError."""
    from cytotune.engine.synth import write_dataset

    write_dataset("metastasis", tmp_path / "d", n=16, size=16, seed=0, progress=False)
    study = tmp_path / "study.yaml"
    study.write_text("name: s\ndataset: d\ntrain: {epochs: many}\n")
    assert main(["search", "--config", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cytotune search: error: ")
    assert "epochs" in err
    assert "Traceback" not in err


def test_entry_ends_the_process_at_once_only_when_the_command_asks(monkeypatch, capsys):
    """``cytotune`` (cli.entry) flushes the output and ends with os._exit where the command set
    ``_exit_at_once`` (explain without Ray), else exits normally with the same code."""
    import argparse
    import os

    from cytotune.engine import cli

    ended: list[int] = []

    def fake_exit(code):
        ended.append(code)
        raise SystemExit("os._exit")

    monkeypatch.setattr(os, "_exit", fake_exit)

    def command(asks):
        def run(argv):
            print("table")
            return 3, argparse.Namespace(_exit_at_once=asks)

        return run

    monkeypatch.setattr(cli, "_main", command(True))
    with pytest.raises(SystemExit, match="os._exit"):
        cli.entry(["explain"])
    assert ended == [3]
    assert capsys.readouterr().out == "table\n"
    monkeypatch.setattr(cli, "_main", command(False))
    with pytest.raises(SystemExit) as exited:
        cli.entry(["explain"])
    assert exited.value.code == 3
    assert ended == [3]  # no second os._exit
