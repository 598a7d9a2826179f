"""Fields/s of the learned finder with and without the in-model score prefilter, one fold.

Trains Mask R-CNN on one fold's training fields of dsb2018 (``--epochs``, short: the speed
depends on how many boxes pass, not on the last points of accuracy), then times the held-out
fields at 512 x 512 and at their own sizes, at score thresholds 0.5 (the default) and 0.7 (what
the threshold choice picked on every fold at 36 epochs), with ``LearnedFinder.prefilter`` on and
off; checks that both give the same label images and reports the held-out scores.

  python bench/crop_speed.py --device cuda --epochs 12 --out bench/results/crop_speed.json
  python bench/crop_speed.py --device cpu --limit 12 --epochs 1 --max-steps 2 --width 32   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402
from crop import DEFAULT_DATA, folds, load, machine, rate_at_size, timed  # noqa: E402
from cytotune.engine.crop.learned import LearnedFinder  # noqa: E402
from cytotune.engine.crop.metrics import score_fields  # noqa: E402
from cytotune.engine.crop.train import TrainOptions, train_model  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--fold", type=int, default=4, help="held-out fold of 5 (4)")
    p.add_argument("--limit", type=int, help="first N fields only (smoke runs)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    ids, items = load(args.data, args.limit)
    val = folds(len(items), 5)[args.fold]
    train = np.setdiff1d(np.arange(len(items)), val)
    options = TrainOptions(
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        width=args.width, device=args.device,
    )  # fmt: skip
    start = time.perf_counter()
    model, _ = train_model([items[i] for i in train], [], options, progress=False)
    trained = time.perf_counter() - start
    images, truths = [items[i][0] for i in val], [items[i][1] for i in val]
    rows = []
    for score in (0.5, 0.7):
        labels = {}
        for prefilter in (False, True):
            finder = LearnedFinder(
                model=model, config={}, device=args.device, batch_size=args.batch_size,
                score_threshold=score, mask_threshold=0.7 if score == 0.7 else 0.5,
            )  # fmt: skip
            finder.prefilter = prefilter
            finder.find_many(images[: args.batch_size])  # warm-up
            labels[prefilter], seconds = timed(finder, images)
            row = {
                "score_threshold": score, "mask_threshold": finder.mask_threshold,
                "prefilter": prefilter, "fields_per_s": len(images) / seconds,
                "fields_per_s_512": rate_at_size(finder, images, 512),
                **score_fields(truths, labels[prefilter]),
            }  # fmt: skip
            rows.append(row)
            print(
                {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True
            )
        same = all(np.array_equal(a, b) for a, b in zip(labels[False], labels[True]))
        rows[-1]["same_labels_as_without"] = same
        print(f"score {score}: same label images with and without the prefilter: {same}")
    result = {
        "rows": rows, "fold": args.fold, "epochs": args.epochs, "train_seconds": trained,
        "fields": len(val), "machine": machine(args.device),
    }  # fmt: skip
    write_json(args.out, result, "crop_speed.py", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
