"""The search vs the plain loop (issue 13, item 4): same data, same folds, twice the plain loop's time.

Per dataset (MitoCheck, BBBC021, synthetic metastasis), in one call on the GPU machine:
1. the cytotune dataset and its frozen grouped folds are made when missing (``cytotune ingest``
   or ``cytotune synth``, then ``cytotune folds --k 5 --group group|well --name k5-group``);
2. the plain loop of ``bench/plain_loop.py`` (fixed recipe, no cytotune import) trains the K
   fold models one after another on one GPU: its synchronised wall time, data already on the
   GPU, is plain_gpu_s (reading the data: plain_load_s);
3. ``cytotune search`` runs on the same dataset and fold set with ``budget.time_budget_s`` =
   ``--budget-factor`` (2) x plain_gpu_s; the whole command's wall time (Ray start-up included)
   is search_gpu_s; the best trial scored on all K folds is read from the study store;
4. both are printed as fold mean ± std with the paired per-fold difference (search - plain) and
   its Nadeau-Bengio corrected resampled t-test p; the rows go to ``--out`` (a JSON list, rows
   of the same dataset replaced) and, with ``--markdown FILE``, a table section in that file.

    # GPU machine (Ray/Optuna from .gpu/, see bench/real/device.sh), all three datasets:
    bash bench/real/device.sh python bench/vs_plain.py --markdown BENCHMARKS.md
    python bench/vs_plain.py --datasets mitocheck --data data --trials 64 --gpus-per-trial 0.125
    python bench/vs_plain.py --self-test       # statistics and result reading, no training
    python bench/vs_plain.py --smoke-test      # CPU, tiny synthetic set, every stage, minutes

Datasets are looked up in ``--data`` (default ``data``), sources in ``--sources`` (default
``../shared/datasets``); studies go to ``--runs`` (default ``runs/vs_plain``), one new study per
call. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from plain_loop import Recipe, run_plain

ROOT = Path(__file__).resolve().parents[1]
METRIC = "f1_weighted"
FOLDS_DONE = "folds_done"  # trials-table column: folds a trial was scored on (fold racing)
MARK_START, MARK_END = "<!-- vs_plain:start -->", "<!-- vs_plain:end -->"


@dataclass(frozen=True)
class Source:
    """How a benchmark dataset is made and grouped."""

    make: str  # "ingest" (from --sources/NAME/index.csv) or "synth"
    channels: str | None  # ingest --channels
    group: str  # fold group column
    well_column: str | None = None


DATASETS: dict[str, Source] = {
    "mitocheck": Source("ingest", "chromatin", "group"),
    "bbbc021": Source("ingest", "dna,tubulin,actin", "group", well_column="well"),
    "metastasis": Source("synth", None, "well"),
}


def cytotune_command() -> list[str]:
    """``cytotune`` when on PATH, else the CLI module (the GPU machine has no installed script)."""
    found = shutil.which("cytotune")
    return [found] if found else [sys.executable, "-m", "cytotune.engine.cli"]


def run_command(cmd: list[str]) -> float:
    """Run a command with its output streamed; return its wall seconds; raise on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    rc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": path}).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(
            f"`{shlex.join(cmd)}` exited with {rc} after {seconds:.0f} s (see its output above)"
        )
    return seconds


def prepare(name: str, args: argparse.Namespace) -> tuple[Path, str]:
    """Make the dataset and its grouped fold set when missing; return (dataset dir, fold name)."""
    source, dataset, cli = DATASETS[name], args.data / name, cytotune_command()
    if not (dataset / "manifest.json").is_file():
        if source.make == "synth":
            size = ["--n", str(args.synth_n), "--size", str(args.synth_size), "--no-progress"]
            size += ["--weak-fraction", str(args.synth_weak_fraction)]
            run_command([*cli, "synth", "--task", name, "--out", str(dataset), *size])
        else:
            index = args.sources / name / "index.csv"
            if not index.is_file():
                raise FileNotFoundError(
                    f"{dataset} is not ingested and {index} does not exist: pass --data with the "
                    f"ingested dataset or --sources with the folder holding {name}/index.csv"
                )
            channels = ["--channels", str(source.channels)]
            run_command([*cli, "ingest", str(index), "--out", str(dataset), *channels])
    elif source.make == "synth":
        manifest = json.loads((dataset / "manifest.json").read_text())
        wanted = (args.synth_n, args.synth_size)
        if (manifest["num_rows"], manifest["shape"][-1]) != wanted:
            raise ValueError(
                f"{dataset} holds {manifest['num_rows']} cells at {manifest['shape'][-1]} px, not "
                f"--synth-n {wanted[0]} at --synth-size {wanted[1]}; remove it or match the flags"
            )
    fold_name = f"k{args.k}-group"
    if not (dataset / "folds" / f"{fold_name}.json").is_file():
        split = ["--k", str(args.k), "--group", source.group, "--name", fold_name]
        run_command([*cli, "folds", str(dataset), *split])
    return dataset, fold_name


def write_study(
    name: str, dataset: Path, fold_name: str, budget_s: float, args: argparse.Namespace
) -> Path:
    """The study file: the dataset's fold set, the space, ``budget_s`` seconds, the resources."""
    source = DATASETS[name]
    space = args.space if not Path(args.space).is_file() else str(Path(args.space).resolve())
    budget = {"trials": args.trials, "max_epochs": args.max_epochs}
    budget["time_budget_s"] = round(budget_s, 1)
    if args.grace_epochs is not None:
        budget["grace_epochs"] = args.grace_epochs
    if args.max_concurrent is not None:
        budget["max_concurrent"] = args.max_concurrent
    study = {
        "name": f"vs-plain-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        "dataset": str(dataset.resolve()),
        "folds": {"name": fold_name, "k": args.k, "group": source.group},
        "space": space,
        "budget": budget,
        "resources": {"cpus": 1, "gpus": args.gpus_per_trial},
        "objective": {"metric": METRIC},
        "loader": "inprocess",
        "train": {"precision": "auto"},
        "seed": args.seed,
        "storage": str(args.runs.resolve()),
    }
    if source.well_column:
        study["well_column"] = source.well_column
    args.runs.mkdir(parents=True, exist_ok=True)
    path = args.runs / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def best_trial(study_dir: Path, metric: str, k: int) -> dict:
    """The best trial by the leaderboard among those scored on all ``k`` folds.

    Returns:
        trial_id, family, params, status, epochs_done, scores ({fold: score}), trials (how many
        the study started) and statuses (count per status).
    """
    import pandas as pd
    from cytotune.engine.search.leaderboard import leaderboard
    from cytotune.engine.search.store import StudyStore

    store = StudyStore(str(study_dir))
    board, folds = leaderboard(store, metric, "max"), store.table("folds")
    if board.empty or folds.empty or metric not in folds:
        raise RuntimeError(f"study {study_dir} has no trial with per-fold {metric} scores")
    for row in board.to_dict("records"):
        if row.get("status") == "failed" or (FOLDS_DONE in row and not row[FOLDS_DONE] >= k):
            continue
        mine = folds[folds["trial_id"] == row["trial_id"]]
        scores = {int(f): float(v) for f, v in zip(mine["fold"], mine[metric]) if pd.notna(v)}
        if set(range(k)) <= set(scores):
            params = json.loads(row["params"]) if isinstance(row.get("params"), str) else {}
            return {
                "trial_id": str(row["trial_id"]),
                "family": row.get("family"),
                "params": params,
                "status": row.get("status"),
                "epochs_done": int(row.get("epochs_done") or 0),
                "scores": {f: scores[f] for f in range(k)},
                "trials": len(board),
                "statuses": {str(s): int(n) for s, n in board["status"].value_counts().items()},
            }
    raise RuntimeError(f"no trial of {study_dir} was scored on all {k} folds (raise the budget?)")


def compare(plain: list[float], search: list[float], test_train_ratio: float) -> dict:
    """Fold means ± std (ddof 1) and the paired search - plain difference with its NB p."""
    from cytotune.dashboard.stats import nadeau_bengio

    out = {}
    for key, scores in (("plain", plain), ("search", search)):
        out[f"{key}_mean"], out[f"{key}_std"] = np.mean(scores), np.std(scores, ddof=1)
    diff, t, p = nadeau_bengio(search, plain, test_train_ratio)
    out |= {"diff_mean": diff, "t": t, "p_value": p}
    return {k: float(v) for k, v in out.items()} | {"diff_folds": list(np.subtract(search, plain))}


def bench_dataset(name: str, args: argparse.Namespace) -> dict:
    """Steps 1-3 for one dataset; returns its result row."""
    dataset, fold_name = prepare(name, args)
    recipe = Recipe(epochs=args.plain_epochs, seed=args.seed)
    plain = run_plain(dataset, fold_name, recipe, args.device)
    budget_s = max(args.budget_factor * plain["wall_s"], args.min_budget_s)
    print(f"plain: {plain['wall_s']:.1f} s; search budget {budget_s:.0f} s", flush=True)
    if plain["device"] != "cpu":
        import torch

        torch.cuda.empty_cache()  # the search's trials get the GPU memory back
    study = write_study(name, dataset, fold_name, budget_s, args)  # RUNS/<study name>.yaml
    where = ["--storage", str(args.runs), "--quiet"]
    search_cmd = [*cytotune_command(), "search", "--config", str(study), *where]
    search_s = run_command(search_cmd)
    plain_scores = [f[METRIC] for f in plain["folds"]]
    ratio = float(np.mean([f["n_val"] / f["n_train"] for f in plain["folds"]]))
    try:
        best = best_trial(args.runs / study.stem, METRIC, args.k)
    except RuntimeError as exc:  # recorded as a result: the search had no full-K trial in time
        print(f"{name}: {exc}", flush=True)
        best, search_scores = {"error": str(exc)}, []
        comparison = {"plain_mean": float(np.mean(plain_scores)), "search_mean": None}
        comparison |= {"plain_std": float(np.std(plain_scores, ddof=1)), "search_std": None}
    else:
        search_scores = [best["scores"][f] for f in range(args.k)]
        comparison = compare(plain_scores, search_scores, ratio)
    return {
        "dataset": name,
        "metric": METRIC,
        "budget_factor": args.budget_factor,
        **comparison,
        "plain_gpu_s": plain["wall_s"],
        "search_gpu_s": search_s,
        "time_budget_s": budget_s,
        "device": plain["device"],
        "k": args.k,
        "fold_set": plain["fold_set"],
        "test_train_ratio": ratio,
        "plain_folds": plain_scores,
        "search_folds": search_scores,
        "plain_load_s": plain["load_s"],
        "plain_images_per_s": plain["images_per_s"],
        **search_throughput(args.runs / study.stem, search_s),
        "plain_recipe": plain["recipe"],
        "best_trial": {k: v for k, v in best.items() if k != "scores"},
        "study": str(args.runs / study.stem),
        "search_command": shlex.join(search_cmd),
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def search_throughput(study_dir: Path, search_s: float) -> dict:
    """Training images/s of the search's trials: while training (images over their training
    seconds, all trials pooled) and aggregate (the same images over the whole search wall)."""
    from cytotune.engine.search.store import StudyStore

    trials = StudyStore(str(study_dir)).table("trials")
    if trials.empty or "time/train_s" not in trials or "images_per_s" not in trials:
        return {}
    seconds = trials["time/train_s"].fillna(0.0)
    images = float((trials["images_per_s"].fillna(0.0) * seconds).sum())
    return {
        "search_train_images_per_s": images / max(float(seconds.sum()), 1e-9),
        "search_aggregate_images_per_s": images / max(search_s, 1e-9),
        "search_trials": len(trials),
    }


def markdown_table(rows: list[dict]) -> str:
    header = ["dataset", "device", "budget", "plain loop", "plain GPU s", "search best"]
    header += ["search GPU s", "search - plain", "p (NB)", "best trial"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        best, head = r["best_trial"], f"| {r['dataset']} | {r['device']} | "
        head += f"{r.get('budget_factor', 2.0):g}x plain | "
        head += f"{r['plain_mean']:.3f} ± {r['plain_std']:.3f} | {r['plain_gpu_s']:.0f} | "
        if r.get("search_mean") is None:  # no configuration scored on all folds in time
            lines.append(head + f"none on all folds | {r['search_gpu_s']:.0f} | - | - | - |")
            continue
        lines.append(
            head + f"{r['search_mean']:.3f} ± {r['search_std']:.3f} | "
            f"{r['search_gpu_s']:.0f} | {r['diff_mean']:+.3f} | {r['p_value']:.3g} | "
            f"{best['trial_id']} ({best['family']}, {best['epochs_done']} ep) |"
        )
    return "\n".join(lines)


def update_markdown(path: Path, rows: list[dict]) -> None:
    """Replace (or append) the marked vs-plain section of ``path``."""
    commands = sorted({r["command"] for r in rows})
    title = f"### Search vs the plain loop ({METRIC}, grouped folds, mean ± std)"
    lines = [MARK_START, title, "", markdown_table(rows), "", *[f"`{c}`" for c in commands]]
    section = "\n".join([*lines, MARK_END])
    text = path.read_text() if path.is_file() else ""
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    path.write_text(text)


def save_rows(path: Path, new: list[dict]) -> list[dict]:
    """Write ``new`` to the JSON list at ``path``, replacing rows of the same dataset and
    budget factor."""
    old = json.loads(path.read_text()) if path.is_file() else []
    keys = {(r["dataset"], r.get("budget_factor", 2.0)) for r in new}
    rows = [r for r in old if (r.get("dataset"), r.get("budget_factor", 2.0)) not in keys] + new
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1, default=str))
    return rows


def self_test() -> None:
    """Check the statistics against hand computations and the result reading on a fake study."""
    # d = search - plain = [.01, .02, .03, 0, .04]: mean .02, var .00025, ratio .25
    # t = .02 / sqrt((1/5 + .25) * .00025) = 2 / sqrt(1.125); df = 4 has a closed-form CDF
    plain = [0.80, 0.70, 0.75, 0.72, 0.78]
    search = [p + d for p, d in zip(plain, [0.01, 0.02, 0.03, 0.0, 0.04])]
    got = compare(plain, search, 0.25)
    t = 2 / math.sqrt(1.125)
    u = t / math.sqrt(1 + t * t / 4)
    p = 2 * (1 - (0.5 + 0.375 * u * (1 - t * t / (12 * (1 + t * t / 4)))))
    assert abs(got["t"] - t) < 1e-9 and abs(got["p_value"] - p) < 1e-9, (got, t, p)
    assert abs(got["diff_mean"] - 0.02) < 1e-12, got
    assert abs(got["plain_std"] - np.std(plain, ddof=1)) < 1e-12, got

    from cytotune.engine.search.store import StudyStore

    with tempfile.TemporaryDirectory() as tmp:
        store = StudyStore(tmp)  # a, d: better, short of folds (fold rows, folds_done); c: failed
        fake = [("a", 0.9, 2, 2), ("b", 0.8, 3, 3), ("c", 0.95, 3, 3), ("d", 0.99, 3, 2)]
        for tid, score, n, done in fake:
            status = "failed" if tid == "c" else "completed"
            row = {"trial_id": tid, "family": "f", "status": status, f"val/{METRIC}": score}
            store.upsert("trials", (tid,), {**row, "params": "{}", FOLDS_DONE: done})
            for fold in range(n):
                row = {"trial_id": tid, "fold": fold, METRIC: score + fold / 100}
                store.upsert("folds", (tid, fold), row)
        store.flush()
        best = best_trial(Path(tmp), METRIC, 3)
        assert best["trial_id"] == "b", best
        assert np.allclose([best["scores"][f] for f in range(3)], [0.8, 0.81, 0.82]), best
        row = {"dataset": "x", "device": "cpu", "plain_gpu_s": 1.0, "search_gpu_s": 2.0}
        row |= {"best_trial": best, "command": "cmd", **got}
        md = Path(tmp) / "B.md"
        md.write_text("# Benchmarks\n\nbefore\n")
        update_markdown(md, [row])
        update_markdown(md, [row])
        text = md.read_text()
        assert text.count(MARK_START) == 1 and text.startswith("# Benchmarks"), text
        assert "| x | cpu |" in text, text
    print("self-test passed: Nadeau-Bengio t and p = hand computation; best on K folds; markdown")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    form = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=form)
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=list(DATASETS))
    parser.add_argument("--data", type=Path, default=Path("data"), help="datasets root")
    parser.add_argument("--sources", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--runs", type=Path, default=Path("runs/vs_plain"), help="study storage")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vs_plain.json")
    parser.add_argument("--markdown", type=Path, help="file whose vs-plain table section to update")
    parser.add_argument("--k", type=int, default=5, help="folds (default 5)")
    parser.add_argument("--synth-n", type=int, default=4000, help="synthetic cells (default 4000)")
    parser.add_argument("--synth-size", type=int, default=64, help="synthetic crop px (default 64)")
    parser.add_argument(
        "--synth-weak-fraction",
        type=float,
        default=0.6,
        help="share of metastasizing-well cells showing the phenotype (default 0.6: with 1 both "
        "sides score 1.0 and there is nothing to compare)",
    )
    parser.add_argument("--plain-epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--device", help="plain loop device (default cuda when available)")
    parser.add_argument("--space", default="default", help="search space name or YAML path")
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--grace-epochs", type=int, help="ASHA grace (default: the study's)")
    parser.add_argument("--gpus-per-trial", type=float, help="default 0.125 with a GPU, else 0")
    parser.add_argument("--max-concurrent", type=int, help="default 8 with a GPU, else 2")
    parser.add_argument("--budget-factor", type=float, default=2.0, help="x plain_gpu_s")
    parser.add_argument("--min-budget-s", type=float, default=0.0, help="search budget floor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--self-test", action="store_true", help="statistics and reading only")
    parser.add_argument("--smoke-test", action="store_true", help="tiny CPU run of every stage")
    args = parser.parse_args(argv)
    if args.smoke_test:  # tiny, CPU, every stage; results kept out of bench/results
        tmp = Path(tempfile.mkdtemp(prefix="vs_plain_smoke_"))
        given = set(argv if argv is not None else sys.argv[1:])
        args.datasets, args.k, args.synth_n, args.synth_size = ["metastasis"], 2, 400, 32
        args.plain_epochs, args.device, args.space = 2, "cpu", "demo"
        args.trials, args.max_epochs, args.grace_epochs = 2, 2, 1
        args.gpus_per_trial, args.max_concurrent, args.min_budget_s = 0.0, 2, 120.0
        args.data = args.data if "--data" in given else tmp / "data"
        args.runs = args.runs if "--runs" in given else tmp / "runs"
        args.out = args.out if "--out" in given else tmp / "vs_plain.json"
    if args.gpus_per_trial is None or args.max_concurrent is None:
        import torch

        gpu = torch.cuda.is_available() and args.device != "cpu"
        if args.gpus_per_trial is None:
            args.gpus_per_trial = 0.125 if gpu else 0.0
        args.max_concurrent = args.max_concurrent or (8 if gpu else 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # engine/ and dashboard/ when not installed (GPU machine)
    if args.self_test:
        self_test()
        return 0
    rows = []
    for name in args.datasets:
        print(f"== {name}", flush=True)
        row = bench_dataset(name, args)
        rows.append(row)
        save_rows(args.out, [row])  # after every dataset: a later failure keeps the earlier ones
        if row.get("search_mean") is None:
            continue
        folds = ", ".join(f"{d:+.3f}" for d in row["diff_folds"])
        print(f"{name}: plain {row['plain_mean']:.4f} ± {row['plain_std']:.4f} in "
              f"{row['plain_gpu_s']:.0f} s; search {row['search_mean']:.4f} ± "
              f"{row['search_std']:.4f} in {row['search_gpu_s']:.0f} s; search - plain "
              f"{row['diff_mean']:+.4f} (folds {folds}), Nadeau-Bengio p {row['p_value']:.3g}",
              flush=True)  # fmt: skip
    print("\n" + markdown_table(rows))
    print(f"\nwrote {args.out}")
    if args.markdown:
        update_markdown(args.markdown, save_rows(args.out, []))
        print(f"updated {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
