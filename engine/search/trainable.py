"""The Ray Tune trainable: one trial = one configuration on every fold, reported after each fold
(``budget.race: folds``) or each epoch (``race: epochs``).

Follows Tune's function-API examples: ``tune.get_checkpoint()`` to resume (after a retry or a
driver restart), ``tune.report(metrics, checkpoint=...)`` once per epoch with the fold-mean
validation metrics ASHA prunes on, and a checkpoint directory holding every fold model.
"""

from __future__ import annotations

import tempfile
import time

from .crossval import CrossValidation
from .study import StudyConfig, load_plugins


def pick_device(gpus: float) -> str:
    import torch

    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def run_trial(config: dict, study: StudyConfig, plugin_sources: dict | None = None) -> None:
    """Tune function trainable; ``config`` is the nested search sample.

    The study's plugins are imported first (from ``plugin_sources``, ``{path: source}``, for
    plugin files this node lacks), so their families can be built here.
    """
    entered = time.perf_counter()
    import ray
    from ray import tune

    load_plugins(study.plugins, plugin_sources)
    node_id = ray.get_runtime_context().get_node_id()  # the store records where each trial ran
    cv = CrossValidation(study, config, device=pick_device(study.resources.gpus))
    cv.add_time("setup", time.perf_counter() - entered)  # data, models, optimisers
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            cv.restore(directory)
    while not cv.finished:
        report, details = cv.step()
        report["node_id"] = node_id
        last = cv.finished
        tick = time.perf_counter()
        if last or study.budget.race == "folds" or cv.epoch % study.checkpoint_every == 0:
            with tempfile.TemporaryDirectory() as directory:
                cv.save(directory, details)
                cv.add_time("checkpoint", time.perf_counter() - tick)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(report)
        cv.add_time("report_total", time.perf_counter() - tick)  # checkpoint + tune.report
