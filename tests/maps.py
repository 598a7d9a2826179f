"""Explanation maps for hand-built test studies, in the stored format that
:func:`cytotune.explainers.job.layout.decode_map` reads (the explain workers write whole batches
through :func:`cytotune.explainers.job.worker.binary_column`)."""

from __future__ import annotations

import numpy as np


def encode_map(array: np.ndarray) -> tuple[bytes, list[int]]:
    """float16 bytes and shape (C, H, W) of one map; an (H, W) map gets C = 1."""
    array = np.ascontiguousarray(array, dtype=np.float16)
    if array.ndim == 2:
        array = array[None]
    return array.tobytes(), list(array.shape)


def map_worker_kwargs(study, top_k: int = 2, **changes) -> dict:
    """``MapWorker`` arguments for the Grad-CAM maps of ``study``'s best ``top_k`` trials on the
    CPU (``changes`` added or replaced)."""
    from cytotune.explainers.job.config import ExplainConfig
    from cytotune.explainers.job.plan import build_plan

    plan = build_plan(ExplainConfig(study=str(study), top_k=top_k, methods=("gradcam",)))
    return {
        "units": {t.trial_id: t.fold_dirs for t in plan.trials},
        "methods": {"gradcam": {}},
        "manifest": plan.manifest.to_dict(),
        "device": "cpu",
        **changes,
    }
