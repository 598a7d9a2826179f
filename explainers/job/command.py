"""Explain the best trials of a study: attribution maps, population maps, mosaics, quality scores.

Each cell is explained by the fold model that never trained on it (--split val). On one machine
(a laptop, one GPU or several) the job runs without Ray, one process per visible GPU; with several
Ray nodes, --actors or --address, Ray Data streams the cells to explainer actors (4 per GPU by
default); --executor chooses. A rerun computes only what is missing or changed (--overwrite
recomputes everything).
"""

from __future__ import annotations

import argparse

from .config import BUILTIN_METHODS, DEFAULT_METHODS, PRECISIONS, STAGES
from .executor import EXECUTORS

EPILOG = """examples:
  cytotune explain --study runs/demo/studies/demo
  cytotune explain --study STUDY --top-k 1 --methods gradcam smoothgrad:n=8 --limit 500
  cytotune explain --study STUDY --trials 3f2a9c01 --stages maps quality --gpus-per-actor 0.5

outputs land in STUDY/explain/ (maps Parquet, overlays, population maps, quality.parquet)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--study", required=True, help="study directory written by cytotune search")
    parser.add_argument(
        "--top-k", type=int, default=3, help="explain the k best trials (default 3)"
    )
    parser.add_argument(
        "--trials", nargs="+", default=(), help="explicit trial ids instead of the top k"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help=f"methods, each optionally name:key=value,... (built in: {', '.join(BUILTIN_METHODS)}; "
        f"default: {' '.join(DEFAULT_METHODS)}); CAMs take layer=MODULE (e.g. "
        "gradcam:layer=backbone.layer2; default: the deepest layer with a map of at least 4x4)",
    )
    parser.add_argument(
        "--split",
        default="val",
        choices=("val", "train"),
        help="val: each cell by the fold model that never trained on it (default val)",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N cells (seeded sample)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cells per explainer batch (default 256 on a GPU with the local executor, else 128)",
    )
    parser.add_argument(
        "--actors", type=int, default=None, help="explainer actors (default: one per GPU)"
    )
    parser.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.25,
        help="GPU share per actor (default 0.25: four actors per GPU, fastest measured)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: bf16 autocast on a GPU, fp32 on the CPU (default auto)",
    )
    parser.add_argument(
        "--overlays", type=int, default=24, help="PNG overlays per trial and method (default 24)"
    )
    parser.add_argument(
        "--quality-cells",
        type=int,
        default=128,
        help="cells for deletion/insertion and randomisation (default 128)",
    )
    parser.add_argument(
        "--head-check",
        action="store_true",
        help="score every trial's head-only randomisation (default: only where no held-out "
        "accuracy decides the model verdict: regression, --split train)",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=list(STAGES),
        choices=STAGES,
        metavar="STAGE",
        help=f"stages to run: {' '.join(STAGES)} (default: all)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sampled cells: --limit, overlays, quality scores (default 0)",
    )
    parser.add_argument("--address", default=None, help="Ray address (default: local Ray)")
    parser.add_argument(
        "--executor",
        default="auto",
        choices=EXECUTORS,
        help="local: on this machine, no Ray, 4 worker threads on each visible GPU (one "
        "process per GPU; fastest on one machine); ray: on Ray actors; auto (default): ray "
        "with several Ray nodes, --actors or --address, else local",
    )
    parser.add_argument("--overwrite", action="store_true", help="recompute finished parts too")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from .config import ExplainConfig
    from .processes import discard_warm, warm_early

    config = ExplainConfig(
        study=args.study,
        top_k=args.top_k,
        trials=tuple(args.trials),
        methods=tuple(args.methods),
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        precision=args.precision,
        overlays=args.overlays,
        quality_cells=args.quality_cells,
        head_check=args.head_check,
        stages=tuple(args.stages),
        seed=args.seed,
        address=args.address,
        executor=args.executor,
        overwrite=args.overwrite,
    )
    try:
        # the side stages' children start before this process imports the job (on a GPU host)
        warm_early(config)
        from .layout import explain_dir
        from .runner import run_explain
        from .summary import format_quality

        plan, state = run_explain(config, progress=not args.quiet)
    finally:
        discard_warm()
    print(format_quality(plan.study_dir))
    print(f"outputs: {explain_dir(plan.study_dir)}")
    # the job's threads and children are done and its files written: the CLI may end the
    # process at once (cli.entry) instead of tearing down CUDA and the interpreter (1.7-2 s
    # of the MitoCheck job's command on an H100); not after Ray was started here
    args._exit_at_once = not _ray_started()
    return (
        1
        if state.data.get("failures")
        and len(state.data["failures"]) >= len(plan.trials) * len(config.method_names)
        else 0
    )


def _ray_started() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()
