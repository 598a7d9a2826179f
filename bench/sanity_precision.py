"""Does the sanity check's verdict need fp32? The quality stage of ``cytotune explain`` run on
the same study three ways: fp32 with TF32 off (the reference: what the CPU computes), TF32
allowed (what the job does on a GPU since session 17, on this bench's evidence), and bf16
autocast (what the maps use). Compares every (trial,
method)'s sanity rho, its interval and its verdict with the fp32 run's, and times the stage.

The quality stage computes its sampled scores beside the maps; on one H100 the MitoCheck job's
maps took 29 s alone and 44 s beside it (BENCHMARKS.md, session 15-16). On the GPU every
precision gave fp32's verdicts (session 17), so the job now lets the check use TF32 there.

  python bench/sanity_precision.py --study STUDY --top-k 3 --out bench/results/sanity_precision.json
  python bench/sanity_precision.py --study STUDY --limit 300 --quality-cells 32 --precisions fp32 bf16  # CPU
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from _common import machine, write_json

SANITY = ("sanity_rho", "sanity_rho_low", "sanity_rho_high", "sanity_verdict")


@contextlib.contextmanager
def scope(precision: str, device_type: str):
    """fp32 (TF32 off), tf32 (TF32 on, autocast off) or bf16 (autocast to bfloat16)."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    try:
        if precision == "bf16":
            with torch.autocast(device_type, dtype=torch.bfloat16):
                yield
        else:
            with torch.autocast(device_type, enabled=False):
                yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def run(study: Path, precision: str, args) -> tuple[pd.DataFrame, float]:
    """The quality stage (after the maps) of a fresh copy of ``study`` at ``precision``."""
    from cytotune.explainers.job import scores
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.layout import explain_dir
    from cytotune.explainers.job.runner import run_explain
    from cytotune.explainers.quality import sanity

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / study.name
        shutil.copytree(study, copy, ignore=shutil.ignore_patterns("explain"))
        config = ExplainConfig(
            study=str(copy), top_k=args.top_k, methods=tuple(args.methods), limit=args.limit,
            quality_cells=args.quality_cells, stages=("maps", "quality"), seed=args.seed,
        )  # fmt: skip
        run_explain(
            dataclass_replace(config, stages=("maps",)), progress=False, log=lambda *_: None
        )
        fixed = lambda device_type="cpu": scope(precision, device_type)  # noqa: E731
        saved = scores.check_precision, sanity.check_precision
        scores.check_precision = sanity.check_precision = fixed
        try:
            start = time.perf_counter()
            run_explain(
                dataclass_replace(config, stages=("quality",)), progress=False, log=lambda *_: None
            )
            seconds = time.perf_counter() - start
        finally:
            scores.check_precision, sanity.check_precision = saved
        table = pd.read_parquet(explain_dir(copy) / "quality.parquet")
    table = table[table["metric"].isin(SANITY)]
    wide = table.pivot_table(index=["trial_id", "method"], columns="metric", values="mean")
    return wide.reset_index(), seconds


def dataclass_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--study", type=Path, required=True, help="a study directory")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--methods", nargs="+",
                   default=["gradcam", "gradcam++", "layercam", "smoothgrad", "integrated_gradients"])  # fmt: skip
    p.add_argument("--limit", type=int, help="explain at most this many cells (maps)")
    p.add_argument("--quality-cells", type=int, default=128)
    p.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.precisions[0] != "fp32":
        raise SystemExit("the first --precisions entry is the reference: fp32")
    runs = {}
    for precision in args.precisions:
        runs[precision] = run(args.study, precision, args)
        print(f"{precision}: quality stage {runs[precision][1]:.1f} s", flush=True)
    ref = runs["fp32"][0].set_index(["trial_id", "method"])
    rows, summary = [], {}
    for precision, (table, seconds) in runs.items():
        other = table.set_index(["trial_id", "method"]).reindex(ref.index)
        same = (other["sanity_verdict"] == ref["sanity_verdict"]).mean()
        gap = (other["sanity_rho"] - ref["sanity_rho"]).abs()
        summary[precision] = {"seconds": seconds, "same_verdict": float(same),
                              "max_rho_difference": float(gap.max()), "pairs": len(ref)}  # fmt: skip
        for key, r in other.iterrows():
            rows.append({"precision": precision, "trial_id": key[0], "method": key[1],
                         **{m: float(r[m]) for m in SANITY if m in r},
                         "rho_fp32": float(ref.loc[key, "sanity_rho"])})  # fmt: skip
        print(f"{precision}: {summary[precision]}")
    result = {"summary": summary, "rows": rows, "machine": machine()}
    write_json(args.out, result, "sanity_precision.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
