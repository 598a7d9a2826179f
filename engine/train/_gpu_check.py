"""Temporary GPU check (deleted after use)."""

import sys
import time

import numpy as np
import torch

from engine.data import CellDataset
from engine.synth import write_dataset
from engine.train import FoldTrainer, TrainConfig, task_spec
from search_spaces import ModelConfig, create_model

import engine.data.loader as L
import search_spaces.families.protopnet as P


class _T:
    def __getattr__(self, name):
        return getattr(torch, name)

    def full(self, *a, **k):
        k.setdefault("device", "cuda")
        return torch.full(*a, **k)


P.torch = _T()  # work around push's CPU 'best' tensor
size, n = int(sys.argv[1]), int(sys.argv[2])
run_families = sys.argv[3] if len(sys.argv) > 3 else "all"
path = "/tmp/ds"
write_dataset("metastasis", path, n, size=size, seed=0, progress=False, overwrite=True)
ds = CellDataset(path)
ids = ds.metadata()["cell_id"].to_numpy()
wells = ds.metadata()["well"].astype(str).to_numpy()
val = np.isin(wells, np.unique(wells)[::4])
tr, va = ids[~val], ids[val]
print(ds, len(tr), len(va), flush=True)
task = task_spec(ds.manifest)
tiny = {"channels": [8, 8, 16, 16], "stem_width": 8}
for fam, args in [
    ("small_cnn", {}),
    ("backbone", {"backbone": "resnet18"}),
] + ([] if len(sys.argv) < 4 else [
    ("protopnet", {"timm_kwargs": tiny, "push_start": 2, "push_every": 1, "last_layer_epochs": 1, "warmup_epochs": 1}),
]):
    t = FoldTrainer(ModelConfig(fam, 3, task, args), TrainConfig(epochs=3, batch_size=256, lr=1e-3), ds, tr, va, device="cuda")
    for e in range(3):
        s = t.train_epoch(e)
        ev = t.evaluate()
        print(fam, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}, "acc", (ev.outputs.argmax(1) == ev.targets).mean(), flush=True)
    if fam == "protopnet":
        print("sources", t.model.prototype_sources[:2])

# engine vs bare loop, resnet18, batch 256, bf16 + channels_last, same data, 3 epochs each, last 2 timed
mc = ModelConfig("backbone", 3, task, {"backbone": "resnet18"})
t = FoldTrainer(mc, TrainConfig(epochs=3, batch_size=256, class_weighting="none", warmup_epochs=0), ds, tr, tr[:256], device="cuda")
rates = [t.train_epoch(e)["images_per_s"] for e in range(3)]
print("engine img/s", [round(r) for r in rates], flush=True)
_cache = {}
_orig = L.normalize


def cached_normalize(images, offset, scale):
    key = (id(offset), images.device)
    if key not in _cache:
        _cache[key] = (
            torch.as_tensor(offset, dtype=images.dtype, device=images.device).view(1, -1, 1, 1),
            torch.as_tensor(scale, dtype=images.dtype, device=images.device).view(1, -1, 1, 1),
        )
    o, s_ = _cache[key]
    return (images - o) / s_


L.normalize = cached_normalize
t = FoldTrainer(mc, TrainConfig(epochs=3, batch_size=256, class_weighting="none", warmup_epochs=0), ds, tr, tr[:256], device="cuda")
rates = [t.train_epoch(e)["images_per_s"] for e in range(3)]
print("engine img/s, normalize constants cached on device", [round(r) for r in rates], flush=True)
loader = t.train_loader
x_all = torch.from_numpy(loader.arrays["image"].astype(np.float32)).cuda()
y_all = torch.from_numpy(loader.arrays["target"]).cuda()
x_all = ((x_all - x_all.mean((0, 2, 3), keepdim=True)) / x_all.std((0, 2, 3), keepdim=True)).contiguous(memory_format=torch.channels_last)
model = create_model(mc).cuda().to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
for ep in range(3):
    torch.cuda.synchronize(); t0 = time.perf_counter(); seen = 0
    perm = torch.randperm(len(x_all), device="cuda")
    for i in range(0, len(x_all) - 255, 256):
        idx = perm[i : i + 256]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); seen += 256
    torch.cuda.synchronize(); print("bare img/s", round(seen / (time.perf_counter() - t0)), flush=True)

for ep in range(2):
    torch.cuda.synchronize(); t0 = time.perf_counter(); seen = 0
    for b in loader.epoch(10 + ep, train=True):
        seen += len(b)
    torch.cuda.synchronize(); print("loader-only img/s", round(seen / (time.perf_counter() - t0)), flush=True)
