"""Upgrade a study (or an explain run) from an older cytotune to this one's table formats.

A study's trials, folds and epochs tables and its explain run's tables (the index tables and
the per-cell map tables) record their format
version; a table written before cytotune kept versions is rewritten in place, atomically, with
the same values. Tables that are current already are left alone, so running it twice changes
nothing the second time.

Examples:
  cytotune upgrade runs/studies/NAME            # the study's tables and its explain/ run
  cytotune upgrade runs/studies/NAME/explain    # only the explain run
  cytotune upgrade s3://bucket/studies/NAME     # a study on an object store (tables only)
"""

from __future__ import annotations

import argparse
from pathlib import Path

STUDY_MARKERS = ("study.json", "trials.parquet", "folds.parquet", "epochs.parquet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        metavar="DIR",
        help="a study directory (or URI), or the explain/ directory of one",
    )


def run(args: argparse.Namespace) -> int:
    changed = upgrade(args.directory)
    for line in changed:
        print(f"upgraded {line}")
    if not changed:
        print(f"{args.directory}: nothing to upgrade (every table is in this cytotune's format)")
    return 0


def upgrade(directory: str) -> list[str]:
    """Upgrade the study or explain run at ``directory``; returns what was rewritten.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        ValueError: it is neither a study nor an explain run, or a table is of a format this
            cytotune cannot upgrade (a newer one); the message names the fix.
    """
    import pyarrow.fs as pafs
    from cytotune.engine.search import tables
    from cytotune.engine.search.store import StudyStore
    from cytotune.explainers.job import layout

    if "://" not in directory and not Path(directory).is_dir():
        raise FileNotFoundError(
            f"{directory} does not exist; give a study directory such as runs/studies/NAME"
        )
    if "://" not in directory and (Path(directory) / layout.STATE_FILE).is_file():
        return _explain(layout, Path(directory).parent)  # DIR is <study>/explain
    store = StudyStore(directory)
    kinds = [store.fs.get_file_info(store.join(m)).type for m in STUDY_MARKERS]
    if pafs.FileType.File not in kinds:
        raise ValueError(
            f"{directory} is not a cytotune study (no {', '.join(STUDY_MARKERS)}) nor an explain "
            f"run (no {layout.STATE_FILE}); give the study directory, such as runs/studies/NAME "
            "(its explain/ run is upgraded with it)"
        )
    done = [
        f"{store.join(name)}.parquet to format version {tables.VERSION}" for name in store.upgrade()
    ]
    if store.is_local and layout.explain_dir(store.path).is_dir():
        done += _explain(layout, store.path)
    return done


def _explain(layout, study_dir: Path) -> list[str]:
    return [
        f"{p} to format version {layout.INDEX_VERSION}" for p in layout.upgrade_explain(study_dir)
    ]
