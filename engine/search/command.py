"""Search model families with Ray Tune + Optuna + ASHA on the study's frozen cross-validation folds.

The study file names the dataset, folds, search space(s), budget, resources per trial, objective(s),
seed and storage (see engine/search/study.py or the README). Without --address a local Ray
instance starts by itself; with --address auto (or HOST:PORT) the study runs on that cluster.
Every trial evaluates one configuration on all K folds, reports the fold mean each epoch (ASHA
prunes on it) and keeps per-fold metrics and checkpoints in the study directory.
Examples:
  cytotune search --config study.yaml
  cytotune search --config study.yaml --address auto --name metastasis-v2
  cytotune search --config study.yaml --resume            # after the driver was stopped
"""

from __future__ import annotations

import argparse
import dataclasses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study YAML file")
    parser.add_argument(
        "--address",
        help="Ray cluster address (auto, HOST:PORT, ray://HOST:PORT); default: local Ray",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted study (completed trials are kept, none repeated)",
    )
    parser.add_argument("--name", help="study name (overrides the file's name)")
    parser.add_argument("--storage", help="study storage root (overrides the file's storage)")
    parser.add_argument("--quiet", action="store_true", help="no live table")


def run(args: argparse.Namespace) -> int:
    from .runner import run_search
    from .study import StudyConfig

    study = StudyConfig.from_yaml(args.config)
    changes = {k: v for k, v in (("name", args.name), ("storage", args.storage)) if v}
    if changes:
        study = dataclasses.replace(study, **changes)
    from cytotune.engine.cli import STARTED

    run_search(
        study, address=args.address, resume=args.resume, verbose=not args.quiet, started=STARTED
    )
    return 0
