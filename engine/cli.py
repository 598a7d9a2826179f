"""The ``cytotune`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; modules are
imported only when their subcommand (or the help) is needed, so ``cytotune --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from cytotune import engine

# When the command started: a search's time budget counts from here (imports and Ray start-up
# are part of what the user waits for).
STARTED = time.time()

# name -> (module, one-line help). Dict table, no if/elif chain.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ingest": (
        "cytotune.engine.data.ingest_command",
        "turn crops (folders, CSV/Parquet index, TIFF/PNG/npy/npz) into a dataset",
    ),
    "synth": (
        "cytotune.engine.synth.command",
        "generate synthetic fluorescence cells with ground-truth evidence masks",
    ),
    "crop": (
        "cytotune.engine.crop.command",
        "find the cells in whole fields and write single-cell crops (train: the learned finder)",
    ),
    "folds": (
        "cytotune.engine.data.folds_command",
        "freeze stratified, grouped cross-validation folds with a leakage audit",
    ),
    "search": (
        "cytotune.engine.search.command",
        "search model families with Ray Tune + Optuna + ASHA over grouped CV folds",
    ),
    "explain": (
        "cytotune.explainers.job.command",
        "explain the best trials: maps, population maps, mosaics, quality scores",
    ),
    "demo": (
        "cytotune.engine.demo",
        "run the embedded default end to end on synthetic cells (no data needed)",
    ),
    "pull": (
        "cytotune.engine.export.command",
        "pull a trial as a self-contained bundle (weights, contract, card); manage aliases",
    ),
    "info": (
        "cytotune.engine.data.info_command",
        "describe a dataset: channels, classes, groups, stats, quarantine, folds",
    ),
    "upgrade": (
        "cytotune.engine.upgrade_command",
        "rewrite a study's (or explain run's) tables from an older cytotune in this one's format",
    ),
    "dashboard": (
        "cytotune.dashboard.command",
        "browse studies, trials, comparisons and explanations in the browser",
    ),
}


# What the commands raise for bad input (cytotune's own errors: StudyError, SpaceError,
# BundleError, ... are ValueErrors): shown as one line. Anything else, TypeError included, is a
# bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(
        prog="cytotune",
        description=(
            "Distributed AutoML and explanations for single-cell microscopy images. "
            "Typical flow: ingest (or synth) -> folds -> search -> explain -> dashboard -> pull."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cytotune {engine.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if command not in (None, name):
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        child = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(child)
        child.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _main(argv)[0]


def _main(argv: list[str] | None) -> tuple[int, argparse.Namespace | None]:
    """The exit code and the parsed arguments of one command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(command if command in SUBCOMMANDS else "")
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2, args
    try:
        return int(args._run(args) or 0), args
    except USER_ERRORS as exc:
        print(f"cytotune {args.command}: error: {exc}", file=sys.stderr)
        return 2, args


def entry(argv: list[str] | None = None) -> None:
    """The ``cytotune`` program: :func:`main`, then the exit. A command that set
    ``_exit_at_once`` on its arguments (``explain`` without Ray: its threads and children are
    done, its files written) ends the process with ``os._exit`` once the output is flushed,
    skipping the interpreter's and CUDA's teardown."""
    code, args = _main(argv)
    if getattr(args, "_exit_at_once", False):  # the command joined its threads and children
        import logging
        import os

        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing left to say there
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
