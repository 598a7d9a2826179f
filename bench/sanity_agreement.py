"""CPU vs GPU agreement of the randomisation sanity check: two ``sanity_calibration.py`` JSONs
(the same cases run with ``--device cpu`` and ``--device cuda``) compared case by case.

    python bench/sanity_agreement.py bench/results/sanity_calibration.json GPU.json --out AGREE.json

A case is (task, architecture, state, method). Reported per case: rho on each device, their
difference, both verdicts; overall: the share of cases with the same verdict, with the same
verdict under the job's calibrated threshold (upper 95% bound below it), and the largest |rho difference| for
untrained models (same initial weights on both devices) and trained ones (trained separately).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEY = ("task", "arch", "state", "method")


def cases(path: Path) -> dict[tuple, dict]:
    rows = json.loads(Path(path).read_text())["rows"]
    return {tuple(r[k] for k in KEY): r for r in rows if r.get("rho") is not None}


def compare(cpu: dict[tuple, dict], gpu: dict[tuple, dict], threshold: float) -> dict:
    """Per-case rows and the overall agreement of the two runs' shared cases."""
    shared = sorted(set(cpu) & set(gpu))
    if not shared:
        raise ValueError(
            "the two runs share no (task, arch, state, method) case; run the same "
            "--tasks/--archs/--methods on both devices"
        )
    rows = []
    for key in shared:
        a, b = cpu[key], gpu[key]
        rows.append(
            {
                **dict(zip(KEY, key)),
                "rho_cpu": a["rho"],
                "rho_gpu": b["rho"],
                "rho_diff": b["rho"] - a["rho"],
                "verdict_cpu": a["verdict"],
                "verdict_gpu": b["verdict"],
                "same_verdict": a["verdict"] == b["verdict"],
                "same_at_threshold": (a["ci"][1] < threshold) == (b["ci"][1] < threshold),
            }
        )
    by_state = {}
    for state in sorted({r["state"] for r in rows}):
        diffs = [abs(r["rho_diff"]) for r in rows if r["state"] == state]
        by_state[state] = {
            "cases": len(diffs),
            "max_abs_rho_diff": max(diffs),
            "mean_abs_rho_diff": sum(diffs) / len(diffs),
        }
    return {
        "cases": len(rows),
        "verdict_agreement": sum(r["same_verdict"] for r in rows) / len(rows),
        "threshold": threshold,
        "threshold_agreement": sum(r["same_at_threshold"] for r in rows) / len(rows),
        "by_state": by_state,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cpu", type=Path, help="calibration JSON of the CPU run")
    parser.add_argument("gpu", type=Path, help="calibration JSON of the GPU run")
    parser.add_argument("--threshold", type=float, help="default: the job's (CALIBRATED_THRESHOLD)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    threshold = args.threshold
    if threshold is None:
        from cytotune.explainers.quality.sanity import CALIBRATED_THRESHOLD as threshold
    result = compare(cases(args.cpu), cases(args.gpu), threshold)
    print("| task / model | state | method | rho CPU | rho GPU | verdict CPU | verdict GPU |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['task']} / {r['arch']} | {r['state']} | {r['method']} | {r['rho_cpu']:+.2f} "
            f"| {r['rho_gpu']:+.2f} | {r['verdict_cpu']} | {r['verdict_gpu']} |"
        )
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
