"""Cell finding on dsb2018: detection P/R/F1 at IoU 0.5 and the Bowl's mAP(0.5:0.95), 5 folds.

Folds are over fields (KFold, shuffled, seed 0). The classical finder needs no training, but its
two watershed settings are chosen per fold on the training fields from a small grid (best mean
Bowl score), then scored on the held-out fold. The learned finder (Mask R-CNN from random
initialisation) is trained on the four training folds and scored on the fifth; run it on a GPU
machine. The seed finder (AttentionNet's two-scale anchor detector, :mod:`engine.crop.seed`) is
trained the same way; its score threshold is chosen per fold on the training fields (best F1).
The learned finder is also scored on a grid of score x mask thresholds; its "tuned" row takes
each fold's thresholds from the best F1 + mAP on the other folds' held-out fields (cross-fitted).
Fields/s counts the finder alone (fields already in memory), one process.

  python bench/crop.py --finder classical --out bench/results/crop.json
  python bench/crop.py --finder learned --device cuda --epochs 40 --out bench/results/crop.json
  python bench/crop.py --finder learned --device cpu --limit 12 --folds 2 --epochs 1   # smoke
  python bench/crop.py --finder seed --device cuda --epochs 40 --batch-size 16 --out bench/results/crop.json
  python bench/crop.py --finder seed --device cpu --limit 8 --folds 2 --epochs 1 --quiet   # smoke
  python bench/crop.py --finder learned --regrid det/fold_*.npz --mask-grid 0.6 0.7   # saved detections
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cytotune.engine.crop import create_finder  # noqa: E402
from cytotune.engine.crop.fields import read_field, read_truth  # noqa: E402
from cytotune.engine.crop.metrics import score_field, summarise  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "dsb2018"
CLASSICAL_GRID = (
    {"min_distance": 5, "distance_sigma": 1.5},  # the finder's defaults
    {"min_distance": 3, "distance_sigma": 1.0},
    {"min_distance": 8, "distance_sigma": 2.0},
    {"min_distance": 5, "distance_sigma": 2.5},
)


def load(data: Path, limit: int | None):
    import pandas as pd

    index = pd.read_csv(data / "index.csv", dtype={"id": str})
    if limit:
        index = index.iloc[:limit]
    items = []
    for fid in index["id"]:
        image = read_field(data / "images" / f"{fid}.png")[0]
        items.append((image, read_truth(data / "labels" / f"{fid}.png")))
    return list(index["id"]), items


def folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    from sklearn.model_selection import KFold

    return [val for _, val in KFold(k, shuffle=True, random_state=seed).split(np.arange(n))]


def timed(finder, images) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    preds = finder.find_many(images)
    return preds, time.perf_counter() - start


def machine(device: str = "cpu") -> str:
    cpu = f"{os.cpu_count()}-core CPU ({platform.machine()}, {platform.processor() or 'cpu'})"
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name()} + {cpu}"
    return cpu


def fold_table(scores, splits, choice=None) -> list[dict]:
    """One row per scored fold (folds left out by ``--only-folds`` have no scores)."""
    rows = []
    for f, val in enumerate(splits):
        if any(scores[i] is None for i in val):
            continue
        s = summarise([scores[i] for i in val])
        rows.append({"fold": f, **({"setting": choice[f]} if choice else {}), **s})
    return rows


def pooled_scores(scores) -> dict:
    return summarise([s for s in scores if s is not None])


def pool_fold_rows(rows: list[dict]) -> dict:
    """What :func:`summarise` gives over all fields of ``rows``' folds, from the fold rows alone
    (true positives = precision x predicted objects; mAP is a mean over fields)."""
    tp = sum(round(r["precision"] * r["predicted_objects"]) for r in rows)
    n_true = sum(r["true_objects"] for r in rows)
    n_pred = sum(r["predicted_objects"] for r in rows)
    fields = sum(r["fields"] for r in rows)
    return {
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "f1": 2 * tp / (n_true + n_pred) if n_true + n_pred else 0.0,
        "map": sum(r["map"] * r["fields"] for r in rows) / fields if fields else 0.0,
        "fields": fields,
        "true_objects": n_true,
        "predicted_objects": n_pred,
    }


def merge_parts(paths: list[Path], finder: str) -> dict:
    """One result from runs that each scored some folds (``--only-folds``, e.g. one per GPU)."""
    parts = [json.loads(Path(p).read_text())[finder] for p in paths]
    rows = sorted((r for part in parts for r in part["folds"]), key=lambda r: r["fold"])
    if len({r["fold"] for r in rows}) != len(rows):
        raise SystemExit(f"the parts score some folds twice: {[r['fold'] for r in rows]}")
    merged = {**parts[0], "folds": rows, "pooled": pool_fold_rows(rows)}
    for key in [k for k in parts[0] if k.startswith("fields_per_s") and k != "fields_per_s_device"]:
        merged[key] = float(np.mean([p[key] for p in parts if key in p]))
    merged["train_seconds_per_fold"] = float(np.mean([p["train_seconds_per_fold"] for p in parts]))
    merged["parts"] = [str(p) for p in paths]
    if any("grid_folds" in part for part in parts):
        merged.pop("tuned", None)
        merged.pop("grid_pooled", None)
        merged.update(with_tuned([r for part in parts for r in part.get("grid_folds", [])]))
    return merged


def bench_classical(ids, items, splits, args) -> dict:
    images = [image for image, _ in items]
    per_setting, seconds = [], []
    for setting in CLASSICAL_GRID:
        finder = create_finder("classical", **setting)
        preds, sec = timed(finder, images)
        per_setting.append([score_field(t, p) for (_, t), p in zip(items, preds)])
        seconds.append(sec)
        print(
            f"classical {setting}: {summarise(per_setting[-1])}  {len(images) / sec:.2f} fields/s",
            flush=True,
        )
    ap = np.array([[s.average_precision() for s in scores] for scores in per_setting])  # (S, N)
    chosen, held_out = [], [None] * len(items)
    for val in splits:
        train = np.setdiff1d(np.arange(len(items)), val)
        best = int(np.argmax(ap[:, train].mean(axis=1)))
        chosen.append(CLASSICAL_GRID[best])
        for i in val:
            held_out[i] = per_setting[best][i]
    return {
        "folds": fold_table(held_out, splits, chosen),
        "pooled": summarise(held_out),
        "fields_per_s": len(images) / seconds[0],
        "fields_per_s_device": "cpu",
        "grid": [{**g, **summarise(s)} for g, s in zip(CLASSICAL_GRID, per_setting)],
    }


def trained_folds(items, splits, args, fit, after=None) -> dict:
    """Train on each selected fold's other folds and score the fold; ``fit(train_items)``
    returns (finder, history, what to record about the fold). Pooled and per-fold scores,
    fields/s of the finder alone (after a warm-up batch), training seconds per fold;
    ``after(finder, fold, held-out items)`` runs after each fold's scoring."""
    held_out, rates, train_s, chosen = [None] * len(items), [], [], {}
    for f, val in enumerate(splits):
        if args.only_folds and f not in args.only_folds:
            continue
        train = np.setdiff1d(np.arange(len(items)), val)
        t0 = time.perf_counter()
        finder, history, chosen[f] = fit([items[i] for i in train])
        train_s.append(time.perf_counter() - t0)
        finder.find_many([items[i][0] for i in val[: finder.batch_size]])  # warm-up
        preds, sec = timed(finder, [items[i][0] for i in val])
        rates.append(len(val) / sec)
        for i, p in zip(val, preds):
            held_out[i] = score_field(items[i][1], p)
        print(
            f"fold {f}: {summarise([held_out[i] for i in val])}  train {train_s[-1]:.0f} s, "
            f"final loss {history[-1]['loss']:.3f}, {chosen[f] or ''} {rates[-1]:.2f} fields/s",
            flush=True,
        )
        if after is not None:
            after(finder, f, [items[i] for i in val])
    return {
        "folds": fold_table(held_out, splits, chosen if any(chosen.values()) else None),
        "pooled": pooled_scores(held_out),
        "fields_per_s": float(np.mean(rates)),
        "fields_per_s_device": args.device,
        "train_seconds_per_fold": float(np.mean(train_s)),
    }


def bench_learned(ids, items, splits, args) -> dict:
    from cytotune.engine.crop.learned import SCORE_GRID, LearnedFinder, choose_thresholds
    from cytotune.engine.crop.train import TrainOptions, train_model

    options = TrainOptions(
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size or 4, lr=args.lr or 1e-3,
        backbone=args.backbone, width=args.width, min_size=args.min_size, max_size=max(1024, 2 * args.min_size),
        device=args.device, seed=args.seed,
    )  # fmt: skip

    def fit(train_items):
        model, history = train_model(train_items, [], options, progress=not args.quiet)
        finder = LearnedFinder(
            model=model, config={}, device=args.device, batch_size=options.batch_size
        )
        return finder, history, None

    grid_rows, rates = [], []

    def after(finder, fold, val_items):
        fixed = finder.score_threshold, finder.mask_threshold
        _, table = choose_thresholds(finder, val_items)
        finder.score_threshold, finder.mask_threshold = fixed  # the speed at the fixed ones
        grid_rows.extend({"fold": fold, **row} for row in table)
        if args.save_detections:
            found = finder.detections([image for image, _ in val_items], min(SCORE_GRID))
            path = args.save_detections / f"fold_{fold}.npz"
            save_detections(path, splits[fold], found, min(SCORE_GRID))
        rates.append(rate_at_size(finder, [image for image, _ in val_items], args.rate_size))
        print(f"fold {fold}: {rates[-1]:.2f} fields/s at {args.rate_size} x {args.rate_size}")

    result = trained_folds(items, splits, args, fit, after=after)
    return {
        **result,
        **with_tuned(grid_rows),
        f"fields_per_s_{args.rate_size}": float(np.mean(rates)),
        "train": dict(vars(options)),
    }


def rate_at_size(finder, images, size: int) -> float:
    """Fields/s of ``finder`` on ``images`` resized to ``size`` x ``size`` (after a warm-up)."""
    from PIL import Image

    resized = [
        np.asarray(Image.fromarray(np.asarray(x, np.float32)).resize((size, size), Image.BILINEAR))
        for x in images
    ]
    finder.find_many(resized[: finder.batch_size])
    _, seconds = timed(finder, resized)
    return len(resized) / seconds


def save_detections(path: Path, rows, found, floor: float = 0.3) -> None:
    """A fold's detections (scored ``floor`` or more: the grid's lowest score) with the field
    rows they belong to."""
    arrays = {"rows": np.asarray(rows, np.int64), "floor": np.float32(floor)}
    for k, d in enumerate(found):
        arrays |= {f"{k}/{name}": v for name, v in d.arrays().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def regrid(paths: list[Path], items, score_grid, mask_grid) -> dict:
    """The threshold grid and its cross-fitted result from saved detections (no model needed)."""
    from cytotune.engine.crop.learned import Detections
    from cytotune.engine.crop.metrics import score_fields

    rows = []
    for path in paths:
        fold = int(Path(path).stem.split("_")[-1])
        with np.load(path) as z:
            floor = float(z["floor"]) if "floor" in z else 0.3
            if min(score_grid) < floor - 1e-6:
                raise SystemExit(f"{path} holds detections scored {floor:g} or more only")
            field_rows = z["rows"].tolist()
            found = [
                Detections.from_arrays(
                    {n: z[f"{k}/{n}"] for n in ("shape", "scores", "bounds", "masks")}
                )
                for k in range(len(field_rows))
            ]
        truths = [items[i][1] for i in field_rows]
        for st in score_grid:
            for mt in mask_grid:
                scores = score_fields(truths, [d.labels(st, mt) for d in found])
                rows.append({"fold": fold, "score_threshold": st, "mask_threshold": mt, **scores})
    return with_tuned(rows)


def with_tuned(grid_rows: list[dict]) -> dict:
    """The threshold grid's fold rows and, with two folds or more, the cross-fitted result:
    each fold scored at the (score, mask) thresholds ranked best (``threshold_rank``: F1 + mAP)
    on the *other* folds' held-out fields, so no fold's own truth picks its thresholds."""
    from cytotune.engine.crop.learned import threshold_rank

    out = {"grid_folds": grid_rows}
    folds_seen = sorted({r["fold"] for r in grid_rows})
    if len(folds_seen) < 2:
        return out
    points = sorted({(r["score_threshold"], r["mask_threshold"]) for r in grid_rows})

    def rows_at(point, keep):
        return [
            r
            for r in grid_rows
            if r["fold"] in keep and point == (r["score_threshold"], r["mask_threshold"])
        ]

    tuned = []
    for f in folds_seen:
        others = [g for g in folds_seen if g != f]
        pooled = {pt: pool_fold_rows(rows_at(pt, others)) for pt in points}
        best = max(points, key=lambda pt: threshold_rank(pooled[pt]))
        tuned.extend(rows_at(best, [f]))
    out["tuned"] = {"folds": tuned, "pooled": pool_fold_rows(tuned)}
    out["grid_pooled"] = [
        {
            "score_threshold": pt[0],
            "mask_threshold": pt[1],
            **pool_fold_rows(rows_at(pt, folds_seen)),
        }
        for pt in points
    ]
    return out


def bench_seed(ids, items, splits, args) -> dict:
    from cytotune.engine.crop.seed import SeedFinder
    from cytotune.engine.crop.seed_train import SeedTrainOptions, choose_threshold, train_seed_model

    given = {"batch_size": args.batch_size, "lr": args.lr}
    options = SeedTrainOptions(
        **{k: v for k, v in given.items() if v is not None}, epochs=args.epochs,
        max_steps=args.max_steps, crop_size=args.crop_size, widths=tuple(args.widths),
        anchors_per_level=args.anchors_per_level, iou_threshold=args.iou_threshold,
        centre_fraction=args.centre_fraction, device=args.device, seed=args.seed,
    )  # fmt: skip
    anchors = []

    def fit(train_items):
        model, history = train_seed_model(train_items, options, progress=not args.quiet)
        finder = SeedFinder(
            model=model, device=args.device, batch_size=args.infer_batch,
            score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
            centre_fraction=args.centre_fraction,
        )  # fmt: skip
        if args.score_threshold is None:  # chosen on the training fields only
            choose_threshold(finder, train_items)
        anchors.append(model.anchors.view(-1, 2).cpu().numpy().round(1).tolist())
        return finder, history, {"score_threshold": finder.score_threshold}

    result = trained_folds(items, splits, args, fit)
    return {**result, "train": dict(vars(options)), "anchors": anchors[-1]}


BENCHES = {"classical": bench_classical, "learned": bench_learned, "seed": bench_seed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--finder", default="classical", choices=sorted(BENCHES), help="which finder")
    p.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="dsb2018 folder (images/, labels/, index.csv)",
    )
    p.add_argument("--folds", type=int, default=5, help="folds over fields (5)")
    p.add_argument("--limit", type=int, help="first N fields only (smoke runs)")
    p.add_argument("--epochs", type=int, default=40, help="learned/seed: epochs per fold (40)")
    p.add_argument("--max-steps", type=int, help="learned/seed: cap on steps per fold")
    p.add_argument("--batch-size", type=int, help="fields per step (learned 4, seed 16)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (learned 1e-3, seed 2e-3)")
    p.add_argument("--backbone", default="resnet18", help="learned: resnet18/34/50")
    p.add_argument("--width", type=int, default=256, help="learned: FPN/head channels (256)")
    p.add_argument("--min-size", type=int, default=512, help="learned: resize short side to this")
    p.add_argument("--crop-size", type=int, default=384, help="seed: training crop side (384)")
    p.add_argument(
        "--widths", type=int, nargs=4, default=[32, 64, 128, 256], help="seed: stage channels"
    )
    p.add_argument("--anchors-per-level", type=int, default=3, help="seed: anchors per stride (3)")
    p.add_argument("--iou-threshold", type=float, default=0.5, help="seed: merge IoU (0.5)")
    p.add_argument(
        "--centre-fraction", type=float, default=0.3, help="seed: merge centre distance (0.3)"
    )
    p.add_argument(
        "--score-threshold", type=float, help="seed: fixed (default: chosen on training fields)"
    )
    p.add_argument("--infer-batch", type=int, default=8, help="seed: fields per forward (8)")
    p.add_argument("--device", default="cpu", help="learned/seed: cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--only-folds", type=int, nargs="+", help="learned/seed: score only these folds (one run "
        "per GPU; join the runs' JSONs with --merge)",
    )  # fmt: skip
    p.add_argument("--merge", type=Path, nargs="+", help="join these --only-folds runs' JSONs")
    p.add_argument(
        "--save-detections", type=Path, help="learned: write each fold's detections here (.npz)"
    )
    p.add_argument(
        "--regrid", type=Path, nargs="+", help="learned: the threshold grid from saved detections"
    )
    p.add_argument("--score-grid", type=float, nargs="+", help="--regrid: score thresholds")
    p.add_argument("--mask-grid", type=float, nargs="+", help="--regrid: mask thresholds")
    p.add_argument(
        "--rate-size", type=int, default=512, help="learned: fields/s also at this square size"
    )
    p.add_argument("--out", type=Path, help="JSON file to merge this finder's results into")
    args = p.parse_args(argv)
    if args.merge:
        result = merge_parts(args.merge, args.finder)
        return report(args, result)
    if not (args.data / "index.csv").is_file():
        print(f"dsb2018 not found at {args.data}", file=sys.stderr)
        return 2
    ids, items = load(args.data, args.limit)
    if args.regrid:
        from cytotune.engine.crop.learned import MASK_GRID, SCORE_GRID

        grid = regrid(
            args.regrid, items, args.score_grid or SCORE_GRID, args.mask_grid or MASK_GRID
        )
        pooled = grid.get("grid_pooled") or grid["grid_folds"]  # one fold: its own rows
        best = sorted(pooled, key=lambda r: -(r["f1"] + r["map"]))[:5]
        tuned = [{"tuned": 1, **grid["tuned"]["pooled"]}] if "tuned" in grid else []
        for r in [*best, *tuned]:
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})
        if args.out:
            args.out.write_text(json.dumps(grid, indent=2) + "\n")
        return 0
    splits = folds(len(items), args.folds, args.seed)
    run = BENCHES[args.finder]
    start = time.perf_counter()
    result = run(ids, items, splits, args)
    result.update(
        machine=machine("cpu" if args.finder == "classical" else args.device),
        command="python bench/crop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        fields=len(items), seconds=round(time.perf_counter() - start, 1),
    )  # fmt: skip
    return report(args, result)


def report(args, result: dict) -> int:
    """Print the pooled and per-fold scores; merge ``result`` into ``--out``."""
    pooled = result["pooled"]
    folds_f1 = [r["f1"] for r in result["folds"]]
    folds_map = [r["map"] for r in result["folds"]]
    print(
        f"{args.finder}: F1@0.5 {pooled['f1']:.3f} (folds {np.mean(folds_f1):.3f} ± {np.std(folds_f1):.3f}), "
        f"P {pooled['precision']:.3f}, R {pooled['recall']:.3f}, mAP {pooled['map']:.3f} "
        f"(folds {np.mean(folds_map):.3f} ± {np.std(folds_map):.3f}), {result['fields_per_s']:.2f} fields/s"
    )
    tuned = result.get("tuned")
    if tuned:
        t = tuned["pooled"]
        chosen = sorted({(r["score_threshold"], r["mask_threshold"]) for r in tuned["folds"]})
        print(
            f"{args.finder}, thresholds cross-fitted {chosen}: F1@0.5 {t['f1']:.3f}, "
            f"P {t['precision']:.3f}, R {t['recall']:.3f}, mAP {t['map']:.3f}"
        )
    if args.out:
        merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
        merged[args.finder] = result
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
