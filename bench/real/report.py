"""Markdown tables and figures of a finished real-data study, for docs/results.md.

Reads the study directory (leaderboard, per-fold metrics, explain/ quality and population maps)
and the files `bench/real/study.sh` writes beside it (timings, plain-torch predictions, naive-CV
retrain), prints the markdown, and writes figures to ``--figures``: a population montage (per
class: Gmean-Shape image and Gmean map of the best trial) and a few overlays.

    python bench/real/report.py runs/real-cpu mitocheck --figures docs/results > part.md
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from cytotune.dashboard.pages.compare import family_best, fold_scores, test_train_ratio
from cytotune.dashboard.stats import paired_table
from cytotune.engine.search.leaderboard import leaderboard
from cytotune.engine.search.store import StudyStore
from cytotune.engine.search.study import StudyConfig
from PIL import Image, ImageDraw

MAIN = ("f1_weighted", "accuracy", "balanced_accuracy", "f1_macro", "auc_macro")
QUALITY = ("deletion_auc", "insertion_auc", "randomisation_spearman", "randomisation_passed")


def _pm(row, metric: str) -> str:
    mean, std = row.get(f"val/{metric}"), row.get(f"val/{metric}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if std is not None and not math.isnan(std) else f"{mean:.3f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _params(row) -> str:
    params = json.loads(row["params"]) if isinstance(row.get("params"), str) else {}
    family = params.get("family")
    own = dict(params.get(family, {}))
    own.update({f"train.{k}": v for k, v in params.get("train", {}).items()})
    text = ", ".join(f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in own.items())
    return text.replace("|", "/")


def leaderboard_section(board: pd.DataFrame, metrics: list[str], top: int) -> str:
    rows = [
        [int(r["rank"]), r["trial_id"], r["family"], r["status"], int(r["epochs_done"] or 0)]
        + [_pm(r, m) for m in metrics]
        + [_params(r)]
        for r in board.head(top).to_dict("records")
    ]
    return _table(
        ["rank", "trial", "family", "status", "epochs"] + metrics + ["configuration"], rows
    )


def family_section(store: StudyStore, board: pd.DataFrame, metric: str, mode: str) -> str:
    folds = store.table("folds")
    best = family_best(board, metric, mode)
    scores = fold_scores(folds, metric)
    named = {f"{fam} ({tid})": scores[tid] for fam, tid in best.items() if tid in scores}
    lines = [
        _table(
            ["family", "best trial", f"{metric} fold mean ± std", "epochs"],
            [
                [
                    fam,
                    tid,
                    _pm(board[board.trial_id == tid].iloc[0], metric),
                    int(board[board.trial_id == tid].iloc[0]["epochs_done"] or 0),
                ]
                for fam, tid in best.items()
            ],
        )
    ]
    if len(named) >= 2:
        rows = paired_table(named, test_train_ratio=test_train_ratio(folds))
        lines += [
            "",
            "Paired over the 5 folds (Nadeau-Bengio corrected t-test and exact Wilcoxon signed "
            "rank, Holm-corrected over all pairs):",
            "",
            _table(
                ["a", "b", "mean diff (a - b)", "p NB", "p NB (Holm)", "p Wilcoxon (Holm)"],
                [
                    [
                        r["a"],
                        r["b"],
                        f"{r['mean_diff']:+.3f}",
                        f"{r['p_nb']:.3g}",
                        f"{r['p_nb_holm']:.3g}",
                        f"{r['p_wilcoxon_holm']:.3g}",
                    ]
                    for r in rows
                ],
            ),
        ]
    return "\n".join(lines)


def quality_section(study: Path) -> str:
    path = study / "explain" / "quality.parquet"
    if not path.is_file():
        return "(no explain/quality.parquet)"
    quality = pd.read_parquet(path)
    quality = quality[quality["metric"].isin(QUALITY + ("evidence_ratio_vs_random",))]
    pivot = quality.pivot_table(index=["trial_id", "method"], columns="metric", values="mean")
    columns = [c for c in QUALITY + ("evidence_ratio_vs_random",) if c in pivot.columns]
    rows = [
        [tid, method] + [f"{pivot.loc[(tid, method), c]:.3f}" for c in columns]
        for tid, method in pivot.index
    ]
    return _table(["trial", "method"] + columns, rows)


def timings_section(runs: Path, name: str) -> str:
    path = runs / f"{name}-timings.tsv"
    if not path.is_file():
        return "(no timings)"
    frame = pd.read_csv(path, sep="\t").drop_duplicates("stage", keep="last")
    rows = [
        [r.stage, f"{r.wall_s:.0f}", f"{r.wall_s * r.gpus / 60:.1f}"] for r in frame.itertuples()
    ]
    return _table(["stage", "wall-clock s", "GPU-minutes"], rows)


def population_figure(
    study: Path, trial: str, method: str, out: Path, classes: int = 16
) -> Path | None:
    """Per class: Gmean-Shape image over Gmean map, one column per class."""
    root = study / "explain" / "population" / trial / method
    if not root.is_dir():
        return None
    folders = sorted(p for p in root.iterdir() if (p / "gmean_map.png").is_file())[:classes]
    tiles = [
        (
            p.name,
            Image.open(p / "gmean_image.png").convert("RGB"),
            Image.open(p / "gmean_map.png").convert("RGB"),
        )
        for p in folders
    ]
    size = 128
    canvas = Image.new("RGB", (size * len(tiles), 2 * size + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, shape, heat) in enumerate(tiles):
        canvas.paste(shape.resize((size, size)), (i * size, 16))
        canvas.paste(heat.resize((size, size)), (i * size, 16 + size))
        draw.text((i * size + 2, 2), label[:20], fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def overlay_figure(study: Path, trial: str, method: str, out: Path, count: int = 8) -> Path | None:
    table = study / "explain" / "overlays.parquet"
    if not table.is_file():
        return None
    frame = pd.read_parquet(table)
    frame = frame[frame.trial_id == trial]
    if method not in set(frame.method) and not frame.empty:
        method = str(frame.method.iloc[0])  # overlays are drawn for some methods only
    frame = frame[frame.method == method].head(count)
    if frame.empty:
        return None
    images = [Image.open(study / p).convert("RGB") for p in frame["path"]]
    width, height = images[0].size
    canvas = Image.new("RGB", (width * len(images), height + 28), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (image, row) in enumerate(zip(images, frame.itertuples())):
        canvas.paste(image, (i * width, 28))
        mark = "ok" if row.correct else "WRONG"
        draw.text((i * width + 2, 2), f"{row.label}", fill="black")
        draw.text((i * width + 2, 14), f"-> {row.prediction} {mark}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("name")
    parser.add_argument("--figures", type=Path, required=True)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    study_dir = args.runs / args.name
    store = StudyStore(str(study_dir))
    config = StudyConfig.from_yaml(study_dir / "study.yaml")
    metric, mode = config.objectives[0].metric, config.objectives[0].mode
    board = leaderboard(store, metric, mode)
    metrics = [m for m in MAIN if f"val/{m}" in board and board[f"val/{m}"].notna().any()]
    if config.well_column:
        metrics += [m for m in ("well/accuracy",) if f"val/{m}" in board]
    trials = board["status"].value_counts().to_dict()
    print(f"### {args.name}: leaderboard (top {args.top} of {len(board)} trials: {trials})\n")
    print(leaderboard_section(board, metrics, args.top))
    print("\n### Family comparison (best trial of each family)\n")
    print(family_section(store, board, metric, mode))
    print("\n### Explanation quality (means over the quality cells)\n")
    print(quality_section(study_dir))
    for extra in ("predict", "naive", "batch"):
        path = args.runs / f"{args.name}-{extra}.json"
        if path.is_file():
            print(f"\n`{path.name}`:\n\n```json\n{path.read_text().strip()}\n```")
    print("\n### Time per stage\n")
    print(timings_section(args.runs, args.name))
    best = str(board.iloc[0]["trial_id"])
    figures = [
        (f"population_{method}", population_figure, method)
        for method in dict.fromkeys((args.method, "layercam"))
    ] + [("overlays", overlay_figure, args.method)]
    for kind, make, method in figures:
        out = make(study_dir, best, method, args.figures / f"{args.name}_{kind}.png")
        if out is not None:
            print(f"\n![{args.name} {kind}]({out.name})")


if __name__ == "__main__":
    main()
