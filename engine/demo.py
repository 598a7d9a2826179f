"""Run the embedded default end to end on synthetic cells, with no data of your own.

Steps: synthesise metastasis-task cells (3 channels: DNA, actin, vimentin; per-plate batch
effects; cell and evidence masks) -> check the dataset like an ingested one -> freeze grouped,
stratified folds by well with a leakage audit -> a small cross-family search (Ray Tune + Optuna
TPE + ASHA on a local Ray instance) -> the leaderboard -> `cytotune explain` on the best two
trials (Grad-CAM, LayerCAM, Integrated Gradients; population maps; quality scores). Takes about
2 minutes on 2 CPU cores; the study directory it writes is what `cytotune dashboard` and
`cytotune pull` read.
Example:
  cytotune demo --out runs/demo
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    parser.add_argument("--n", type=int, default=1200, help="synthetic cells (default 1200)")
    parser.add_argument("--size", type=int, default=48, help="crop size in pixels (default 48)")
    parser.add_argument("--trials", type=int, default=6, help="search trials (default 6)")
    parser.add_argument("--epochs", type=int, default=4, help="max epochs per trial (default 4)")
    parser.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    parser.add_argument(
        "--explain-top",
        type=int,
        default=2,
        help="trials to explain afterwards (0: skip; default 2)",
    )
    parser.add_argument(
        "--explain-cells", type=int, default=300, help="cells the explain step covers (default 300)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")


def study_for(dataset: Path, storage: Path, args: argparse.Namespace):
    """The demo's study: the laptop-sized space, balanced accuracy, well-level metrics."""
    from cytotune.engine.search.study import Budget, FoldsSpec, Objective, Resources, StudyConfig

    return StudyConfig(
        name="demo",
        dataset=str(dataset),
        folds=FoldsSpec(name=f"k{args.folds}-well", k=args.folds, group="well", seed=args.seed),
        space=("demo",),
        # 4 epochs x 3 folds: racing over epochs from epoch 2 keeps every family in the running
        # longer than racing over folds (1 fold of 3 is a noisy first rung) or from epoch 1
        # (attention networks start slower): best 0.989 vs 0.965 balanced accuracy
        budget=Budget(
            trials=args.trials, max_epochs=args.epochs, grace_epochs=2, race="epochs"
        ),
        resources=Resources(cpus=1, gpus=0),
        objectives=(Objective("balanced_accuracy"),),
        train={"loader": "inprocess"},
        seed=args.seed,
        storage=str(storage),
        well_column="well",
    )


def run(args: argparse.Namespace) -> int:
    from cytotune.engine.data import info_command
    from cytotune.engine.data.folds import make_folds, save_folds
    from cytotune.engine.data.folds_command import format_audit
    from cytotune.engine.search.runner import run_search
    from cytotune.engine.synth import write_dataset

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise FileExistsError(
                f"{out} already holds a demo; pass --overwrite to replace it or choose another --out"
            )
        shutil.rmtree(out)
    dataset = out / "dataset"
    start = time.perf_counter()
    print(f"[1/5] synthesising {args.n} metastasis-task cells at {args.size} px -> {dataset}")
    write_dataset("metastasis", dataset, n=args.n, size=args.size, seed=args.seed)
    print("[2/5] dataset check")
    info_command.run(argparse.Namespace(dataset=str(dataset), quarantine=False))
    print(f"[3/5] freezing {args.folds} grouped folds by well")
    folds = make_folds(
        dataset,
        k=args.folds,
        group="well",
        stratify="label",
        seed=args.seed,
        name=f"k{args.folds}-well",
        audit_naive=True,
    )
    save_folds(dataset, folds)
    print(format_audit(folds.audit, folds.group))
    print(
        f"[4/5] searching {args.trials} configurations x {args.folds} folds (Ray Tune + Optuna TPE + ASHA)"
    )
    print("loading torch, timm and the model families ...", flush=True)
    from cytotune import search_spaces  # noqa: F401  (5 s on 2 CPU cores: said, not silent)

    study = study_for(dataset, out / "studies", args)
    run_search(study, address=args.address)
    study_dir = out / "studies" / study.name
    if args.explain_top:
        from cytotune.explainers.job.config import ExplainConfig
        from cytotune.explainers.job.runner import run_explain
        from cytotune.explainers.job.summary import format_quality

        print(
            f"[5/5] explaining the best {args.explain_top} trial(s) on {args.explain_cells} cells"
        )
        config = ExplainConfig(
            study=str(study_dir),
            top_k=args.explain_top,
            methods=("gradcam", "layercam", "integrated_gradients:n_steps=16"),
            limit=args.explain_cells,
            quality_cells=64,
            overlays=16,
            address=args.address,
        )
        run_explain(config)
        print(format_quality(study_dir))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0
