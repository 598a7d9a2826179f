"""Pull a trial out of a study as a self-contained bundle; list and promote aliases.

A bundle directory holds the weights (state dicts; TorchScript, torch.export and ONNX on request,
all with the normalisation inside: they take raw crops), config.json to rebuild the model, the data
contract, per-fold cross-validation metrics, provenance and a model card (README.md).
Examples:
  cytotune pull --study runs/demo/studies/demo --out bundles/best
  cytotune pull --study STUDY --rank 2 --ensemble folds --format torch_export,onnx --out B
  cytotune pull --study STUDY --alias champion --retrain-full --out bundles/champion
  cytotune pull --study STUDY --list
  cytotune pull --study STUDY --promote champion --trial bdd8d20b --require-sanity
  cytotune pull --check bundles/best
"""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", help="study directory (from cytotune search or demo)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--rank", type=int, help="leaderboard rank to pull (default 1)")
    which.add_argument("--trial", help="trial id to pull or promote")
    which.add_argument("--alias", help="alias to pull (see --list)")
    parser.add_argument("--out", help="bundle directory to write")
    parser.add_argument(
        "--ensemble",
        choices=["folds"],
        help="pack the K fold models as one model averaging their outputs (probabilities)",
    )
    parser.add_argument(
        "--fold", type=int, help="fold model to pull (default: best validation objective)"
    )
    parser.add_argument(
        "--format",
        default="state_dict,torchscript",
        help="comma-separated: state_dict (always), torchscript, torch_export (model.pt2, "
        "TorchScript's successor), onnx (default: %(default)s)",
    )
    parser.add_argument(
        "--retrain-full",
        action="store_true",
        help="retrain the configuration on every cell first (one model, no Ray)",
    )
    parser.add_argument("--dataset", help="dataset to retrain on (default: the study's)")
    parser.add_argument("--epochs", type=int, help="retraining epochs (default: the trial's)")
    parser.add_argument("--device", default="auto", help="retraining device (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--tta",
        default="trial",
        choices=("trial", "dihedral", "flips", "none"),
        help="test-time averaging over flips/90-degree turns inside the exported model "
        "(default trial: as the trial was scored, its train.tta; none: 8x faster inference)",
    )
    parser.add_argument("--list", action="store_true", help="list aliases and the leaderboard")
    parser.add_argument("--promote", metavar="ALIAS", help="point ALIAS at --trial or --rank")
    parser.add_argument(
        "--require-sanity",
        action="store_true",
        help="refuse to pull (or --promote) unless every explained method of the trial passed "
        "the explanation randomisation sanity check (explain/quality.parquet)",
    )
    parser.add_argument("--note", default="", help="with --promote: a note kept in the registry")
    parser.add_argument("--check", metavar="BUNDLE", help="validate a bundle directory and exit")


def run(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args.check)
    if not args.study:
        raise ValueError("--study DIR is required (or --check BUNDLE)")
    if args.list:
        return _list(args.study)
    if args.promote:
        return _promote(args)
    if not args.out:
        raise ValueError("--out BUNDLE_DIR is required to pull (or use --list / --promote)")
    from .formats import parse_formats
    from .pull import pull
    from .source import select_trial

    formats = parse_formats(args.format)
    source = select_trial(args.study, rank=args.rank, trial_id=args.trial, alias=args.alias)
    if args.require_sanity:
        _require_sanity(args.study, source.trial_id, "pull")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    path, manifest = pull(
        source,
        args.out,
        ensemble=args.ensemble,
        fold=args.fold,
        formats=formats,
        retrain=args.retrain_full,
        dataset=args.dataset,
        device=device,
        epochs=args.epochs,
        overwrite=args.overwrite,
        tta=args.tta,
    )
    for name, info in manifest["formats"].items():
        how = info.get(
            "method", info.get("exporter", f"{len(info.get('files', []))} state dict(s)")
        )
        diff = info.get("max_abs_diff")
        check = "" if diff is None else f", max abs diff {diff:.2g} on sample crops"
        print(f"  {name:<12} {info.get('file', 'weights/')} {how}{check}")
    print(f"bundle written to {path} in {time.perf_counter() - start:.1f} s; see {path}/README.md")
    if manifest["kind"] == "single":
        print("  (one fold model; --ensemble folds or --retrain-full use all the data)")
    return 0


def _check(path: str) -> int:
    from .predict import load_bundle

    bundle = load_bundle(path)
    m = bundle.manifest
    print(
        f"{path}: valid {m['format']} v{m['version']}: {m['family']} {m['kind']} "
        f"({m['members']} member(s)), {len(m['files'])} files verified; "
        f"formats {', '.join(m['formats'])}"
    )
    return 0


def _list(study: str) -> int:
    from .aliases import Registry
    from .source import objective_of, open_study, ranked_trials

    store, info = open_study(study)
    objective = objective_of(store, info)
    aliases = Registry(study).aliases()
    board = ranked_trials(store, objective)
    if aliases:
        print("aliases:")
        for name, entry in sorted(aliases.items()):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["promoted_at"]))
            sanity = entry.get("sanity") or {}
            check = "" if not sanity else f"  sanity {'passed' if sanity['passed'] else 'failed'}"
            print(f"  {name:<12} -> {entry['trial_id']:<12} {when} by {entry['user']}{check}")
    else:
        print(f"aliases: none (set one with `cytotune pull --study {study} --promote champion`)")
    if board.empty:
        print("no finished trial yet")
        return 0
    import pandas as pd

    key = f"val/{objective[0]}"
    by_trial: dict[str, list[str]] = {}
    for name, entry in aliases.items():
        by_trial.setdefault(str(entry["trial_id"]), []).append(name)
    print(f"\n{'rank':>4}  {'trial':<12} {'family':<18} {'status':<9} {objective[0]:<18} aliases")
    for row in board.to_dict("records"):
        mean, std = row.get(key), row.get(f"{key}_std")
        score = "-" if pd.isna(mean) else f"{mean:.4f} ± {0 if pd.isna(std) else std:.4f}"
        names = ",".join(sorted(by_trial.get(str(row["trial_id"]), [])))
        print(
            f"{row['rank']:>4}  {row['trial_id']:<12} {str(row['family'])[:18]:<18} "
            f"{row['status']:<9} {score:<18} {names}"
        )
    return 0


def _require_sanity(study: str, trial_id: str, action: str) -> dict:
    """The trial's sanity status; ValueError naming each method that did not pass and why."""
    from .aliases import sanity_status

    sanity = sanity_status(study, trial_id)
    if not sanity["passed"]:
        failed = [
            f"{m}: {sanity['verdicts'].get(m, 'failed')}"
            for m, v in sanity["methods"].items()
            if v < 1
        ]
        raise ValueError(
            f"--require-sanity: trial {trial_id} failed the explanation randomisation "
            f"check for {'; '.join(failed)} ({sanity['source']}); its maps do not depend on "
            f"the learned weights. {action.capitalize()} another trial, explain more cells if a "
            "method is inconclusive, or drop --require-sanity"
        )
    return sanity


def _promote(args: argparse.Namespace) -> int:
    from .aliases import Registry
    from .source import select_trial

    if args.alias:
        raise ValueError("--promote ALIAS takes --trial ID or --rank N, not --alias")
    source = select_trial(args.study, rank=args.rank, trial_id=args.trial)
    sanity = (
        _require_sanity(args.study, source.trial_id, "promote") if args.require_sanity else None
    )
    metric = source.objective[0]
    entry = Registry(args.study).promote(
        args.promote,
        source.trial_id,
        family=source.trial.get("family"),
        objective={
            "metric": metric,
            "mean": _num(source.trial.get(f"val/{metric}")),
            "std": _num(source.trial.get(f"val/{metric}_std")),
        },
        sanity=sanity,
        note=args.note,
    )
    print(
        f"{args.promote} -> trial {entry['trial_id']} ({source.trial.get('family')}, "
        f"{metric} {json.dumps(entry['objective']['mean'])})"
        + ("; randomisation check passed" if sanity else "")
    )
    return 0


def _num(value) -> float | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else float(value)
