"""Where a training step's time goes on the GPU: the loader alone (gather, augment, normalise),
the captured step alone (graph replays on a fixed batch) and whole epochs, for the default
trial on one fold; per-batch milliseconds, measured in one run.

    python bench/step_profile.py data/mitocheck --folds k5-group
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    from cytotune.engine.search.crossval import CrossValidation
    from cytotune.engine.search.study import Budget, FoldsSpec, StudyConfig
    from cytotune.search_spaces import load_space

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--folds", default="k5-group")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    study = StudyConfig(
        name="profile",
        dataset=args.dataset,
        folds=FoldsSpec(name=args.folds, k=args.k, group="group"),
        budget=Budget(trials=1, max_epochs=40),
        loader="inprocess",
    )
    sync = torch.cuda.synchronize
    for graphs in ("auto", "off"):
        sample = load_space("default").default()
        sample["train"] = {**sample.get("train", {}), "cuda_graphs": graphs}
        trainer = CrossValidation(study, sample, device="cuda")._trainer(0)
        print(f"graphs={graphs}: " + profile(trainer, args.epochs, sync), flush=True)


def profile(trainer, epochs: int, sync) -> str:
    """Per-batch milliseconds of whole epochs, of the loader alone and of graph replays."""
    steps = len(trainer.train_loader)
    trainer.train_epoch()  # warm-up (and the capture)
    epoch = timed(lambda: [trainer.train_epoch() for _ in range(epochs)], sync)
    loader = timed(
        lambda: [list(trainer.train_loader.epoch(e, train=True)) for e in range(epochs)], sync
    )
    line = f"{steps} steps/epoch; epoch {1e3 * epoch / epochs / steps:.2f} ms/step"
    line += f", loader alone {1e3 * loader / epochs / steps:.2f} ms/batch"
    step = trainer._graph_step
    if step is not None and step.captured:
        replay = timed(lambda: [step.graph.replay() for _ in range(200)], sync)
        line += f", graph replay alone {1e3 * replay / 200:.2f} ms"
    return line


if __name__ == "__main__":
    main()
