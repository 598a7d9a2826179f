"""The explain kernel: fold models of the explained trials, applied to one batch of crops.

``MapWorker`` is a callable class, so Ray Data runs it in GPU actors (``map_batches(MapWorker,
num_gpus=...)``) and the bare-kernel benchmark calls it directly on the same Arrow batches.
Each output row is one (cell, trial, method[, regression target]) map with its prediction and
per-cell localisation scores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from cytotune.engine.data.augment import normalize
from cytotune.engine.data.schema import Manifest, decode_images, decode_masks
from cytotune.engine.train.checkpoint import load_fold

from ..methods import create_explainer
from ..methods._registry import get_explainer_class
from ..methods.base import own_thread_hook
from ..methods.cam import release_hooked_gradients, shared_hooked_gradients
from .executor import with_less_memory
from .layout import MAPS, maps_staging_dir
from .norm_folding import fold_norms
from .parts import write_part

# the map rows (the maps format's columns) and, on the one row that reports a method failing on
# a trial, its error (dropped before the rows are written)
OUTPUT_SCHEMA = pa.schema([*MAPS.fields.items(), ("error", pa.string())])


LOAD_THREADS_ENV = "CYTOTUNE_LOAD_THREADS"
LOAD_SHARE_ENV = "CYTOTUNE_LOAD_SHARE"


def load_threads() -> int:
    """Threads a map worker loads its fold models in (file reads, model builds, the norm
    folding's CPU probes): ``CYTOTUNE_LOAD_THREADS``, default 8."""
    from .executor import whole_number

    return whole_number(LOAD_THREADS_ENV, 8, "of threads loading the fold models")


def load_share() -> bool:
    """Whether a map worker's loading threads on a GPU each take a share of the CPU's intra-op
    threads (:func:`loading_pool`): ``CYTOTUNE_LOAD_SHARE``, default on."""
    from .executor import switch

    return switch(LOAD_SHARE_ENV, default=True)


_SHARE_LOCK = threading.Lock()  # one pool at a time lowers the process-wide setting


def _take_share(barrier: threading.Barrier) -> None:
    torch.get_num_threads()  # a thread's intra-op count is set at its first torch call
    barrier.wait()


def loading_pool(threads: int, share: bool) -> ThreadPoolExecutor:
    """A pool of ``threads`` loading threads. With ``share``, each keeps ``1/threads`` of this
    thread's intra-op threads (at least 1) for its CPU ops: its probe forwards then run on its
    share of the cores, where 8 threads of 16 intra-op threads each had 128 on a 16-core host.

    Torch fixes a thread's count at its first torch call from a process-wide setting, so the
    setting is lowered only while the pool's threads make that call (they wait for each other
    at a barrier), then restored: a thread whose first call falls in that moment (a few
    milliseconds) keeps the share too. The map workers use it on a GPU only, where the other
    threads' CPU work is small; on the CPU their results' rounding would depend on the timing."""
    pool = ThreadPoolExecutor(threads, "explain-load")
    if not share or threads <= 1:
        return pool
    with _SHARE_LOCK:
        before = torch.get_num_threads()
        barrier = threading.Barrier(threads + 1)
        torch.set_num_threads(max(1, before // threads))
        try:
            # each task blocks at the barrier, so each submit starts a thread of its own
            started = [pool.submit(_take_share, barrier) for _ in range(threads)]
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:  # a thread did not start: loads still run
            barrier.abort()
        finally:
            torch.set_num_threads(before)
    for future in started:
        future.exception()  # the threads are past the barrier (or it broke): nothing waits
    return pool


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


MIN_CAM_SIDE = 4


def layer_sizes(model, shape) -> dict[str, tuple[int, int]]:
    """Spatial map size (h, w) of every CAM candidate layer on ``shape`` (C, H, W) inputs, in
    forward order: the model's feature layers, plus the siblings of its deepest feature layer
    (the blocks of the same trunk), so a trunk whose last block is too small for a CAM still
    offers its earlier blocks. Layers whose output is not a (B, C, h, w) map are left out."""
    cached = getattr(model, "_cytotune_layer_sizes", None)
    if cached is not None and cached[0] == tuple(shape):
        return cached[1]
    layers = dict(model.feature_layers())
    if layers:
        deepest = list(layers)[-1]
        parent = deepest.rsplit(".", 1)[0] if "." in deepest else ""
        container = model.get_submodule(parent) if parent else model
        for name, module in container.named_children():
            full = f"{parent}.{name}" if parent else name
            # blocks and stages only (a stem conv or a norm layer is no feature map to read)
            blocks = any(True for _ in module.children())
            if full not in layers and blocks and any(True for _ in module.parameters()):
                layers[full] = module
    sizes: dict[str, tuple[int, int]] = {}

    def record(name):
        def hook(module, inputs, out) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4 and name not in sizes:
                sizes[name] = (int(out.shape[-2]), int(out.shape[-1]))

        # other threads' forwards through a shared model would scramble the forward order
        return own_thread_hook(hook)

    handles = [module.register_forward_hook(record(name)) for name, module in layers.items()]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    model._cytotune_layer_sizes = (tuple(shape), sizes)  # dict order: forward order
    return sizes


def cam_layers(model, shape) -> list[str]:
    """Feature layers usable for CAMs on ``shape`` (C, H, W) inputs, shallow to deep.

    Layers whose maps are smaller than MIN_CAM_SIDE pixels on either side are dropped: a 3x3
    or 2x1 map, upsampled to the crop, is a few blocks or bands across the whole cell that say
    little about where (the bands seen on the demo's attention trial came from a 3x3 layer).
    When no layer is that large, the largest map is used.
    """
    sizes = layer_sizes(model, shape)
    usable = [n for n, (h, w) in sizes.items() if min(h, w) >= MIN_CAM_SIDE]
    if usable:
        return usable
    if not sizes:
        return list(model.feature_layers())[-1:]
    return [max(sizes, key=lambda n: min(sizes[n]))]


def uses_layer(method: str) -> bool:
    return bool(getattr(get_explainer_class(method), "uses_layer", False))


def layer_for(method: str, model, shape, requested=None) -> object:
    """CAM layer(s): ``requested`` (a module path or list, e.g. the method option ``layer``)
    when given, else the deepest usable feature layer, or the method's ``default_layers``
    deepest ones (LayerCAM fuses two)."""
    if not uses_layer(method):
        return None
    if requested:
        return requested
    layers = cam_layers(model, shape)
    n = int(getattr(get_explainer_class(method), "default_layers", 1))
    return layers[-n:] if n > 1 and len(layers) > 1 else layers[-1]


def layer_info(method: str, model, shape, requested=None) -> dict:
    """What the page says about a CAM's layer: the one used, its map size and the alternatives."""
    if not uses_layer(method):
        return {}
    chosen = layer_for(method, model, shape, requested)
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    sizes = layer_sizes(model, shape)
    usable = cam_layers(model, shape)
    return {
        "layers": chosen,
        "sizes": {n: list(sizes.get(n, ())) for n in chosen},
        "usable": {n: list(sizes[n]) for n in usable if n in sizes},
        "all": {n: list(v) for n, v in sizes.items()},
        "requested": bool(requested),
    }


def cam_layer_names(model, methods: dict[str, dict]) -> set[str]:
    """Module names a CAM may read: the model's feature layers and the layers ``methods``
    request (their ``layer`` option, a name or a list)."""
    names = set(dict(model.feature_layers())) if hasattr(model, "feature_layers") else set()
    for options in methods.values():
        requested = options.get("layer")
        names.update([requested] if isinstance(requested, str) else list(requested or ()))
    return names


HALF_LIMIT = 32768.0  # float16 holds up to 65504: a map is scaled under half of that


def as_half(maps: torch.Tensor) -> torch.Tensor:
    """Maps ``(B, ...)`` as float16 (how map tables store them) without overflow.

    A map whose largest magnitude is beyond float16's range (gradients x inputs of a sharp model
    on a GPU reached it: stored as inf, the population stage then failed) is scaled down by a
    power of two, which keeps its relative values, the only thing every reader of a map uses.
    A value the method left NaN becomes 0 and an infinite one the map's largest finite magnitude.
    No branch on the values: nothing waits for the GPU here (the copy to the host does later).
    """
    flat = maps.float().reshape(len(maps), -1)
    finite = torch.isfinite(flat)
    bound = torch.where(finite, flat.abs(), 0.0).amax(1, keepdim=True)
    flat = torch.where(finite, flat, torch.where(flat.isnan(), 0.0, flat.sign() * bound))
    peak = flat.abs().amax(1, keepdim=True)  # 0 for an all-zero map: log2 -inf, factor 1
    factor = torch.exp2(-torch.ceil(torch.log2(peak / HALF_LIMIT)).clamp(min=0))
    return (flat * factor).reshape(maps.shape).to(torch.float16)


@dataclasses.dataclass
class LoadedModel:
    model: torch.nn.Module
    offset: torch.Tensor
    scale: torch.Tensor
    takes_mask: bool


class MapWorker:
    """Explains batches of Arrow rows (``cell_id``, ``image``, label/targets, ``fold``, masks).

    Args:
        units: ``{trial_id: {fold: checkpoint_dir}}`` of the models to hold.
        methods: ``{method: options}`` to run.
        manifest: the dataset manifest (as a dict) for decoding pixels and labels.
        precision: ``auto`` (bf16 autocast on CUDA), ``bf16`` or ``fp32``.
        device: torch device (default: CUDA when present).
        trial_methods: the methods to run per trial (default: every method on every trial).
        output: ``{"study_dir": ..., "run_id": ...}`` to write the map rows as Parquet parts
            into the run's staging directories (the actors write in parallel) and return only
            a summary; None returns the map rows.
        pad_to: each fold's cells of a batch (batches of one fold: ``fold_batches``) are
            padded (their own rows repeated) to this many before they are explained, the extra
            maps dropped, unless they are under half of it: every call then has one shape, and
            on a GPU the thread does not meet a new shape's cold cost again for each fold's
            last, smaller batch. None: no padding.
        models_from: a worker whose fold models this one uses: shared on the same device (CAM
            hooks keep only their own thread's activations, and nothing else changes a model
            while it explains), copied onto another (the local executor's threads: 4 workers x
            64 ResNet-50 checkpoints read and built one by one took 48 s of a 1M-map job).
    """

    def __init__(
        self,
        units: dict[str, dict[int, str]],
        methods: dict[str, dict],
        manifest: dict,
        precision: str = "auto",
        device: str | None = None,
        trial_methods: dict[str, list[str]] | None = None,
        output: dict | None = None,
        models_from: MapWorker | None = None,
        pad_to: int | None = None,
    ) -> None:
        self._created = time.time()
        self.output = output  # {"study_dir", "run_id"}: write map parts here (see ``write``)
        self._writer_id = uuid.uuid4().hex[:12]
        self.device = pick_device(device)
        self.pad_to = pad_to
        self.manifest = Manifest.from_dict(manifest)
        self.bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.methods = methods
        # which methods each trial still needs (None: all of them)
        self.trial_methods = trial_methods or {t: list(methods) for t in units}
        self.models: dict[tuple[str, int], LoadedModel] = {}
        if models_from is not None and models_from.device == self.device:
            self.models = dict(models_from.models)  # shared: no file read, no copy
            units = {}
        elif models_from is not None:  # copies on this device: no file read, no model build
            self.models = {
                key: dataclasses.replace(
                    loaded,
                    model=copy.deepcopy(loaded.model).to(self.device),
                    offset=loaded.offset.to(self.device),
                    scale=loaded.scale.to(self.device),
                )
                for key, loaded in models_from.models.items()
            }
            units = {}
        wanted = [(t, int(f), d) for t, folds in units.items() for f, d in folds.items()]
        # read first: a bad value fails before any model is read
        share, threads = load_share(), min(load_threads(), max(1, len(wanted) - 1))

        phases = dict.fromkeys(("read", "fold", "move"), 0.0)  # thread-seconds per phase
        phases_lock = threading.Lock()

        def load(item) -> LoadedModel:  # file reads and copies release the GIL: 8 at a time
            # folded on the CPU (exact fp32, no cold GPU kernels), then moved
            start = time.perf_counter()
            loaded = load_fold(item[2], "cpu")
            model = loaded.model
            keep = cam_layer_names(model, methods)
            read = time.perf_counter()
            folded = fold_norms(model, self.manifest.shape, loaded.takes_mask, keep)
            fold = time.perf_counter()
            model = model.to(self.device)
            if self.device.type == "cuda":
                model = model.to(memory_format=torch.channels_last)
            offset, scale = loaded.offset.to(self.device), loaded.scale.to(self.device)
            with phases_lock:
                phases["read"] += read - start
                phases["fold"] += fold - read
                phases["move"] += time.perf_counter() - fold
            return LoadedModel(model, offset, scale, loaded.takes_mask), folded

        # the first one alone: its imports (timm pulls in torchvision and torch._dynamo, about
        # 900 modules) then run uncontended. In a GPU profile they ran beside 7 loading threads
        # and 13 custom-op registrations took 18.8 s (0.2 s in a process doing nothing else)
        loaded = [load(item) for item in wanted[:1]]
        with loading_pool(threads, share and self.device.type == "cuda") as pool:
            loaded += list(pool.map(load, wanted[1:]))
        for (trial_id, fold, _), (model, _) in zip(wanted, loaded):
            self.models[(trial_id, fold)] = model
        # conv -> batch-norm pairs folded in the models loaded here (norm_folding.py)
        self.norms_folded = sum(folded for _, folded in loaded)
        self.failures: dict[tuple[str, str], str] = {}
        self._native: dict[str, torch.Tensor] = {}  # method -> its last CAM before upsampling
        self.timing = {"created": self._created, "ready": time.time()}
        self.timing["norms_folded"] = self.norms_folded
        self.timing["models_loaded"] = len(wanted)
        self.timing |= {f"load_{k}_s": round(v, 3) for k, v in phases.items()}
        self._report()

    def _report(self) -> None:
        """Start-up timings of this actor in ``explain/workers/`` (where a slow start shows)."""
        if self.output is None:
            return
        directory = Path(self.output["study_dir"]) / "explain" / "workers"
        directory.mkdir(parents=True, exist_ok=True)
        record = {"run_id": self.output["run_id"], "device": str(self.device), "pid": os.getpid()}
        record.update(self.timing)
        (directory / f"{self._writer_id}.json").write_text(json.dumps(record))

    # -- decoding ----------------------------------------------------------------------------
    def _decode(self, table: pa.Table) -> dict:
        m = self.manifest
        images = decode_images(table.column("image"), m.dtype, m.shape)
        out = {
            "cell_id": np.asarray(table.column("cell_id").to_pylist(), dtype=object),
            "fold": table.column("fold").to_numpy().astype(np.int64),
            "image": images if m.dtype in ("uint8", "float32") else images.astype(np.float32),
        }
        h, w = m.shape[1:]
        for column in ("mask", "evidence"):
            masks, valid = optional_masks(table, column, h, w)
            out[column], out[f"{column}_valid"] = masks, valid
        if m.task == "classification":
            out["label"] = np.asarray(table.column("label").to_pylist(), dtype=object)
        else:
            out["target"] = np.stack([table.column(t).to_numpy() for t in m.targets], 1)
        return out

    # -- the kernel --------------------------------------------------------------------------
    def __call__(self, table: pa.Table) -> pa.Table:
        """Map rows for the batch; with ``output`` set, written to the staging directories and
        only a summary (trial_id, method, rows, error) returned."""
        first = "first_batch_done" not in self.timing
        if first:
            self.timing["first_batch_start"] = time.time()
        maps = self.explain(table)
        if self.output is None:
            return maps
        summary = self.write(maps)
        if first:
            self.timing["first_batch_done"] = time.time()
            self._report()
        return summary

    def write(self, maps: pa.Table) -> pa.Table:
        summary = []
        errors = maps.column("error")
        for row in (
            maps.filter(pc.is_valid(errors)).select(["trial_id", "method", "error"]).to_pylist()
        ):
            summary.append({**row, "rows": 0, "writer": self._writer_id})
        maps = maps.filter(pc.is_null(errors)).drop(["error"])
        for (trial_id, method), group in group_parts(maps):
            directory = maps_staging_dir(
                self.output["study_dir"], trial_id, method, self.output["run_id"]
            )
            write_part(group, directory)  # named by the batch: a batch run again replaces it
            summary.append(
                {
                    "trial_id": trial_id,
                    "method": method,
                    "rows": group.num_rows,
                    "error": None,
                    "writer": self._writer_id,
                }
            )
        return pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA)

    def explain(self, table: pa.Table) -> pa.Table:
        batch = self._decode(table)
        tables: list[pa.Table] = []
        for fold in np.unique(batch["fold"]):
            idx = np.flatnonzero(batch["fold"] == fold)
            # the rows explained: the cells, repeated up to pad_to (their maps dropped); a batch
            # under half of it (a small fold) goes as it is: padding would cost more than the
            # shape's new plans
            pad = self.pad_to and 2 * len(idx) >= self.pad_to
            rows = np.resize(idx, max(len(idx), self.pad_to)) if pad else idx
            x_raw = torch.from_numpy(np.ascontiguousarray(take(batch["image"], rows)))
            x_raw = x_raw.to(self.device)
            mask = None
            if batch["mask"] is not None:
                mask = torch.from_numpy(batch["mask"][rows]).to(self.device).float()[:, None]
            for (trial_id, model_fold), loaded in self.models.items():
                if model_fold == fold:
                    tables += self._explain(trial_id, int(fold), loaded, x_raw, mask, batch, idx)
        return pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()

    def _cam_layers(self, method: str) -> int:
        """Layers a CAM method hooks by default (LayerCAM 2), 0 for the others."""
        if not uses_layer(method):
            return 0
        requested = self.methods[method].get("layer")
        if requested:
            return 1 if isinstance(requested, str) else len(requested)
        return int(getattr(get_explainer_class(method), "default_layers", 1))

    def _autocast(self):
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _explain(self, trial_id, fold, loaded, x_raw, mask, batch, idx) -> list[pa.Table]:
        with shared_hooked_gradients():  # the CAMs of this batch and model: one pass
            return self._explain_shared(trial_id, fold, loaded, x_raw, mask, batch, idx)

    def _explain_shared(self, trial_id, fold, loaded, x_raw, mask, batch, idx) -> list[pa.Table]:
        m = self.manifest
        model = loaded.model
        n = len(idx)  # the cells; x_raw may hold more rows (pad_to), whose maps are dropped
        x = normalize(x_raw.float(), loaded.offset, loaded.scale)  # (B, C, H, W)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        fk = {"mask": mask} if loaded.takes_mask and mask is not None else {}
        classification = m.task == "classification"
        methods = [k for k in self.trial_methods[trial_id] if (trial_id, k) not in self.failures]
        # CAMs first (their forward predicts too), those hooking most layers first: the others
        # then read the layers they hooked (shared_hooked_gradients)
        methods.sort(key=lambda k: (not uses_layer(k), -self._cam_layers(k)))
        done: dict[str, torch.Tensor | Exception] = {}
        output = None
        if classification and methods and uses_layer(methods[0]):
            start = time.perf_counter()
            done[methods[0]] = self._attribute(methods[0], model, x, None, fk)
            first_seconds = time.perf_counter() - start
            if not isinstance(done[methods[0]], Exception):
                output = self._last_output.float()
        if output is None:
            with torch.no_grad(), self._autocast():
                output = model(x, **fk).float()  # (B, K)
        common = {
            "cell_id": pa.array(batch["cell_id"][idx].astype(str).tolist(), pa.string()),
            "trial_id": pa.array([trial_id] * n, pa.string()),
            "fold": pa.array(np.full(n, fold, np.int32)),
        }
        if classification:
            probs = torch.softmax(output, 1)
            conf, pred = probs.max(1)
            targets = [pred]
            pred_np = pred[:n].cpu().numpy().astype(np.int32)
            labels = batch["label"][idx]
            label_index = np.array([m.label_map[v] for v in labels], np.int32)
            common |= {
                "label": pa.array(labels.tolist(), pa.string()),
                "label_index": pa.array(label_index),
                "prediction": pa.array([m.classes[p] for p in pred_np], pa.string()),
                "prediction_index": pa.array(pred_np),
                "confidence": pa.array(conf[:n].cpu().numpy().astype(np.float32)),
                "correct": pa.array(label_index == pred_np),
            }
        else:
            rows = len(x)
            targets = [torch.full((rows,), t, device=self.device) for t in range(output.shape[1])]
            values = output[:n].cpu().numpy()
        cell_mask = self._mask_tensor(batch["mask"], idx)
        evidence = self._mask_tensor(batch["evidence"], idx)
        tables = []
        for method in methods:
            if not uses_layer(method):  # the CAMs (sorted first) are done: free their passes
                release_hooked_gradients()
            for target in targets:
                start = time.perf_counter()
                maps = done.pop(method, None)
                if maps is None:
                    maps = self._attribute(method, model, x, target, fk)
                else:
                    start -= first_seconds
                if isinstance(maps, Exception):
                    exc = maps
                    error = f"{type(exc).__name__}: {exc}"
                    self.failures[(trial_id, method)] = error
                    row = {"cell_id": "", "trial_id": trial_id, "method": method, "fold": fold}
                    tables.append(pa.Table.from_pylist([row | {"error": error}], OUTPUT_SCHEMA))
                    break
                maps = maps[:n]
                mass_cell, _ = localisation(maps, cell_mask, self._valid(batch, "mask", idx))
                mass_ev, hits = localisation(maps, evidence, self._valid(batch, "evidence", idx))
                native = self._native.pop(method, None)  # a CAM at its layer's resolution
                stored = maps if native is None else native[:n]
                data = as_half(stored).cpu().numpy()  # half the bytes off the device
                seconds = (time.perf_counter() - start) / len(x)  # padded rows count
                columns = {
                    **common,
                    "method": pa.array([method] * n, pa.string()),
                    "map": binary_column(data),
                    "map_shape": pa.array([list(data.shape[1:])] * n, pa.list_(pa.int32())),
                    "mass_cell": pa.array(mass_cell, pa.float32()),
                    "mass_evidence": pa.array(mass_ev, pa.float32()),
                    "pointing_hit": pa.array(hits, pa.float32()),
                    "seconds": pa.array(np.full(n, seconds, np.float32)),
                }
                t = int(target[0])
                if classification:
                    columns["target_index"] = pa.array(pred_np)
                else:
                    truth, value = batch["target"][idx, t].astype(np.float32), values[:, t]
                    columns |= {
                        "label": pa.array([m.targets[t]] * n, pa.string()),
                        "label_index": pa.array(np.full(n, -1, np.int32)),
                        "prediction": pa.array([f"{v:.6g}" for v in value], pa.string()),
                        "prediction_index": pa.array(np.full(n, -1, np.int32)),
                        "correct": pa.array(np.zeros(n, bool)),
                        "target_index": pa.array(np.full(n, t, np.int32)),
                        "true_value": pa.array(truth),
                        "predicted_value": pa.array(value.astype(np.float32)),
                        "abs_error": pa.array(np.abs(value - truth).astype(np.float32)),
                    }
                tables.append(
                    pa.table(
                        [columns.get(f.name, pa.nulls(n, f.type)) for f in OUTPUT_SCHEMA],
                        schema=OUTPUT_SCHEMA,
                    )
                )
        return tables

    def _attribute(self, method, model, x, target, fk) -> torch.Tensor | Exception:
        """Maps (B, C or 1, H, W) float32, or the exception that says why the method failed."""
        try:
            options = dict(self.methods[method])
            layer = layer_for(method, model, tuple(x.shape[1:]), options.pop("layer", None))
            explainer = create_explainer(method, model, layer, **options)
            with self._autocast():
                maps = with_less_memory(
                    lambda: explainer.attribute(x, target=target, forward_kwargs=fk)
                )
            self._last_output = getattr(explainer, "last_output", None)
            native = getattr(explainer, "last_native", None)
            if native is not None and tuple(native.shape[-2:]) != tuple(maps.shape[-2:]):
                self._native[method] = native.detach()[:, None]  # (B, 1, h, w): what is stored
            return maps.detach().float()
        except torch.AcceleratorError:
            raise  # the device is unusable after it (an illegal address): no method can go on
        except (RuntimeError, ValueError, TypeError) as exc:
            return exc

    @staticmethod
    def _valid(batch, column: str, idx) -> np.ndarray | None:
        valid = batch[f"{column}_valid"]
        return None if valid is None else valid[idx]

    def _mask_tensor(self, masks, idx) -> torch.Tensor | None:
        if masks is None:
            return None
        return torch.from_numpy(masks[idx]).to(self.device) > 0  # (B, H, W) bool


SUMMARY_SCHEMA = pa.schema(
    [
        ("trial_id", pa.string()),
        ("method", pa.string()),
        ("rows", pa.int64()),
        ("error", pa.string()),
        ("writer", pa.string()),  # the actor that computed the rows (how the work spread)
    ]
)


def group_parts(table: pa.Table):
    """(trial_id, method) -> rows of that part, in arrival order."""
    if table.num_rows == 0:
        return
    keys = pc.binary_join_element_wise(table.column("trial_id"), table.column("method"), "\x1f")
    for key in pc.unique(keys).to_pylist():
        trial_id, method = key.split("\x1f")
        yield (trial_id, method), table.filter(pc.equal(keys, key))


def take(array: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``array[idx]``, as a view (no copy) when ``idx`` is one increasing contiguous run."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and np.all(np.diff(idx) == 1):
        return array[idx[0] : idx[-1] + 1]
    return array[idx]


def binary_column(data: np.ndarray) -> pa.Array:
    """(B, ...) array -> Arrow binary column of its rows' bytes, without a copy per row."""
    n = data.shape[0]
    flat = np.ascontiguousarray(data).view(np.uint8).reshape(n, -1)
    offsets = np.arange(n + 1, dtype=np.int32) * flat.shape[1]
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(flat.reshape(-1))]
    )


def optional_masks(table: pa.Table, column: str, h: int, w: int):
    """``(masks (B, H, W) uint8, valid (B,) bool)`` of a mask column, or ``(None, None)`` when
    the table has no such column or no row has a mask (rows without one are not all-inside)."""
    if column not in table.column_names or table.column(column).null_count == table.num_rows:
        return None, None
    values = table.column(column)
    return decode_masks(values.to_pylist(), h, w), pc.is_valid(values).to_numpy(
        zero_copy_only=False
    )


def localisation(
    maps: torch.Tensor, mask: torch.Tensor | None, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per map: share of positive mass inside ``mask`` and pointing-game hit (NaN: no mask).

    Same definitions as :func:`cytotune.explainers.quality.mass_inside` and ``pointing_game``, on the
    device: channels are clipped at 0 then summed for the mass; the peak of the channel sum
    (first in row-major order) must fall inside the mask. Empty masks give NaN hits; rows with
    ``valid`` False (no mask stored for that cell) give NaN for both.
    """
    n = maps.shape[0]
    if mask is None or not bool(mask.any()):
        return np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    mass, hits = _localisation(maps, mask)
    if valid is not None:
        mass[~valid], hits[~valid] = np.nan, np.nan
    return mass, hits


def _localisation(maps: torch.Tensor, mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    pos = maps.clamp_min(0).sum(1)  # (B, H, W)
    total = pos.sum((1, 2))
    inside = (pos * mask).sum((1, 2))
    mass = torch.where(total > 0, inside / total.clamp_min(1e-30), float("nan"))
    peak = maps.sum(1).flatten(1).argmax(1)
    hits = mask.flatten(1).gather(1, peak[:, None])[:, 0].float()
    hits = torch.where(mask.flatten(1).any(1), hits, float("nan"))
    return mass.cpu().numpy(), hits.cpu().numpy()
