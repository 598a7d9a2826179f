"""Temporary: count host-device syncs per training epoch (deleted after use)."""

import warnings

import numpy as np
import torch

from engine.data import CellDataset
from engine.synth import write_dataset
from engine.train import FoldTrainer, TrainConfig, task_spec
from search_spaces import ModelConfig

write_dataset("metastasis", "/tmp/ds2", 2048, size=64, seed=0, progress=False, overwrite=True)
ds = CellDataset("/tmp/ds2")
ids = ds.metadata()["cell_id"].to_numpy()
for fam, args, cw in [("backbone", {"backbone": "resnet18"}, "none"), ("backbone", {"backbone": "resnet18"}, "balanced")]:
    for aug in ["none", "standard"]:
        t = FoldTrainer(ModelConfig(fam, 3, task_spec(ds.manifest), args), TrainConfig(epochs=2, batch_size=256, class_weighting=cw, augment=aug), ds, ids[:1792], ids[1792:], device="cuda")
        t.train_epoch(0)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t.train_epoch(1)
        torch.cuda.set_sync_debug_mode(0)
        where = {}
        for w in caught:
            where[str(w.message)[:60] + " @ " + str(w.filename).split("/work/main/")[-1] + ":" + str(w.lineno)] = where.get(str(w.message)[:60] + " @ " + str(w.filename).split("/work/main/")[-1] + ":" + str(w.lineno), 0) + 1
        print(fam, cw, aug, "steps", len(t.train_loader), "syncs", len(caught), where, flush=True)
