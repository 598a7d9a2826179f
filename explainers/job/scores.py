"""Stage 3: explanation quality per trial and method -> ``explain/quality.parquet``.

From the map tables (every explained cell): mass inside the cell mask, mass inside the evidence
mask and the pointing-game hit rate. On a seeded sample of cells (``quality_cells``), with the
fold model that explained each cell: deletion and insertion AUC, the model-parameter
randomisation check (trained vs fully re-initialised weights; Spearman, SSIM, passed) and, on
synthetic data, the evidence mass of the randomised model's maps. The randomisation check is
:func:`cytotune.explainers.quality.sanity.sanity_check` in fp32 (TF32 on a GPU; 3 random copies, Spearman inside the
cell mask where there is one, bootstrap interval over cells, cascade, the calibrated
threshold); its ``sanity_*`` rows carry the verdict. Prototype models also get
prototype diversity. The sample is scored per (trial, method) on a few long-lived Ray actors
(``QualityContext``, on a GPU when there is one) that read the dataset once and load each fold
model once, with a progress bar over the (trial, method) jobs. For a classifier explained on its
validation cells the held-out balanced accuracy is recorded too (the model verdict's evidence);
the head-only randomisation score, the verdict's other evidence (two more maps per method and
fold), is computed only for trials without it (``needs_head``) or with ``head_check``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from ..quality import deletion_insertion, mass_inside, prototype_diversity
from ..quality.learned import balanced_accuracy_ci, held_out_decides
from ..quality.sanity import SanityConfig, check_precision, combine, sanity_check
from .config import ExplainConfig
from .executor import (
    in_threads,
    memory_retries,
    resolve_executor,
    with_less_memory,
    worker_devices,
)
from .layout import (
    QUALITY_COLUMNS,
    empty_index,
    explain_dir,
    maps_path,
    read_index,
    read_maps,
    write_frame,
)
from .plan import ExplainPlan
from .processes import quality_processes
from .state import ExplainState

MAP_SCORES = ("mass_cell", "mass_evidence", "pointing_hit")


# input values a quality call holds at most (fp32, beside the maps' bf16 calls): 1,024 crops of
# 64 x 64 px. The default budget (32M) put a ResNet-50's 1,300-crop Integrated Gradients calls
# in one, about 8 GB each; 4 of them at once in one process, beside the maps and two more
# quality processes, ran one H100 out of memory
QUALITY_CALL_VALUES = 1 << 22


def _row(trial_id, method, metric, values) -> dict:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return {
        "trial_id": trial_id,
        "method": method,
        "metric": metric,
        "mean": float(values.mean()) if values.size else np.nan,
        "std": float(values.std()) if values.size else np.nan,
        "n": int(values.size),
    }


def map_scores(plan: ExplainPlan, trial_id: str, method: str, split: str = "val") -> list[dict]:
    """Localisation scores of every explained cell and, for a classifier explained on its
    validation cells (``split`` val), the held-out balanced accuracy with its 95% interval and
    chance (``1 / classes``): the model verdict's evidence that the model learned."""
    columns = list(MAP_SCORES) + ["label_index", "prediction_index"]
    frame = read_maps(maps_path(plan.study_dir, trial_id, method), columns).to_pandas()
    rows = [
        _row(trial_id, method, name, frame[name])
        for name in MAP_SCORES
        if frame[name].notna().any()
    ]
    if plan.manifest.task == "classification" and split == "val" and len(frame):
        value, low, high = _accuracy_ci(
            frame["label_index"].to_numpy(), frame["prediction_index"].to_numpy()
        )
        chance = 1 / len(plan.manifest.classes)
        for name, v in (("", value), ("_low", low), ("_high", high)):
            rows.append(
                {**_row(trial_id, method, f"heldout_balanced_accuracy{name}", [v]), "n": len(frame)}
            )
        rows.append(_row(trial_id, method, "chance_balanced_accuracy", [chance]))
    return rows


def _accuracy_ci(labels: np.ndarray, predictions: np.ndarray) -> tuple[float, float, float]:
    """:func:`balanced_accuracy_ci`, once per distinct (labels, predictions): every method of a
    trial has the same predictions, and the bootstrap took 1.2 of the 1.5 s the 15 map tables'
    scores took after the MitoCheck job's maps (on 2 CPU cores)."""
    key = hashlib.sha1(
        np.ascontiguousarray(labels).tobytes() + b"|" + np.ascontiguousarray(predictions).tobytes()
    ).hexdigest()
    with _ACCURACY_LOCK:
        if key not in _ACCURACY:
            if len(_ACCURACY) > 64:
                _ACCURACY.clear()
            _ACCURACY[key] = balanced_accuracy_ci(labels, predictions)
        return _ACCURACY[key]


_ACCURACY: dict[str, tuple[float, float, float]] = {}
_ACCURACY_LOCK = threading.Lock()


class FoldCache:
    """Fold models loaded so far and the random copies of the trials being scored: a context's
    own, or one shared by the quality contexts of one device (:func:`score_locally`), so each
    trial's models load and its copies are drawn once, not once per context that scores one of
    its methods (3 trials x 5 methods on 4 contexts: 6 times). The lock covers loading and
    drawing, both Python under the interpreter lock anyway.

    ``one_trial``: keep only the last trial's copies (a context's own cache: its jobs come
    trial by trial); a shared cache lets a trial's copies go on :meth:`release`."""

    def __init__(self, one_trial: bool = True) -> None:
        self.lock = threading.RLock()
        self.models: dict[str, tuple] = {}
        self.copies: dict[str, dict] = {}  # trial id -> {copy key: the random copy's state}
        self.scratch: dict[str, dict] = {}  # trial id -> {(model id, thread): working copy}
        self.templates: dict[int, object] = {}  # model id -> an unhooked copy to copy from
        self.one_trial = one_trial
        self.loads = 0  # fold models loaded (the tests and the benchmark read it)
        self.copies_made = 0

    def release(self, trial_id: str) -> None:
        with self.lock:
            self.copies.pop(trial_id, None)
            self.scratch.pop(trial_id, None)

    def release_fold(self, trial_id: str, directory: str) -> None:
        """Let go of one fold model of ``trial_id`` (loaded from ``directory``): the model, its
        template, its working copies and random copies, once no task needs them (the quality's
        tasks take folds of every trial in cost order, so a trial's last job comes late)."""
        with self.lock:
            loaded = self.models.pop(directory, None)
            if loaded is None:
                return
            key = id(loaded[0])
            self.templates.pop(key, None)
            for held in (self.scratch.get(trial_id, {}), self.copies.get(trial_id, {})):
                for name in [name for name in held if name[0] == key]:
                    del held[name]


def _finish_copies(state: dict) -> None:
    """Wait for the copies into ``state`` queued on this thread's CUDA stream."""
    import torch

    devices = {v.device for v in state.values() if v.device.type == "cuda"}
    for device in devices:
        torch.cuda.current_stream(device).synchronize()


class QualityContext:
    """What scoring needs that does not change between trials and methods: the device, the
    dataset with its cell and evidence masks, the sampled crops and the fold models with their
    random copies (a :class:`FoldCache`). The quality stage runs one per Ray actor
    (:func:`score_on_actors`), so each is read or loaded once per actor, not once per
    (trial, method) task; in this process the contexts of one device share one cache."""

    def __init__(
        self, dataset_dir: str, device: str | None = None, cache: FoldCache | None = None
    ) -> None:
        from cytotune.engine.data.dataset import CellDataset

        from .worker import pick_device

        self.device = pick_device(device)
        self.dataset = CellDataset(dataset_dir)
        m = self.dataset.manifest
        self.masks = self.dataset.masks() if m.has_mask else None
        _, height, width = m.shape
        self.evidence, self.has_evidence = optional_masks(
            self.dataset.table(["evidence"]) if _has(self.dataset, "evidence") else None,
            height,
            width,
        )
        self.cache = cache or FoldCache()
        self._images: dict[bytes, np.ndarray] = {}
        self._copies_of: str | None = None  # the trial scored last

    @property
    def loads(self) -> int:
        return self.cache.loads

    @property
    def copies_made(self) -> int:
        return self.cache.copies_made

    @property
    def _copies(self) -> dict:
        """The random copies held for the trial scored last."""
        return self.cache.copies.get(self._copies_of, {})

    def randomized(self, trial_id: str):
        """``randomize_weights`` remembered for ``trial_id``: its methods share the random
        copies of each fold model (the same seed gives the same copy, so drawing it once per
        method only repeated the work; a context's own cache lets the previous trial's go).

        A copy is the state of one working copy per fold model and thread, loaded into it on
        each call: deep-copying a model per random copy was 5.5 s of the interpreter lock of
        the MitoCheck job (py-spy, one H100). So a returned model serves until the same
        thread's next call (:func:`sanity_check` uses each at once)."""
        from ..quality.randomisation import reinitialise, selected_layers

        cache = self.cache
        with cache.lock:
            if cache.one_trial and self._copies_of not in (None, trial_id):
                cache.copies.pop(self._copies_of, None)
                cache.scratch.pop(self._copies_of, None)
            copies = cache.copies.setdefault(trial_id, {})
            scratch = cache.scratch.setdefault(trial_id, {})
        self._copies_of = trial_id

        def randomize(model, seed=0, mode="cascading", layers=None, std=0.02):
            selected = selected_layers(model, mode, layers)
            key = (id(model), seed, tuple(selected), std)
            with cache.lock:
                work = scratch.get((id(model), threading.get_ident()))
                if work is None:  # from the hook-free template: other threads hook the model
                    template = cache.templates.get(id(model), model)
                    work = scratch[id(model), threading.get_ident()] = copy.deepcopy(template)
                state = copies.get(key)
                if state is None:
                    work.load_state_dict(model.state_dict())
                    reinitialise(work, selected, seed, std)
                    state = {k: v.clone() for k, v in work.state_dict().items()}
                    _finish_copies(state)  # other threads read it on their own CUDA streams
                    copies[key] = state
                    cache.copies_made += 1
                    return work
            work.load_state_dict(state)
            return work

        return randomize

    def model(self, directory: str):
        """``(model, offset, scale)`` of a fold checkpoint, loaded on first use."""
        from cytotune.engine.train.checkpoint import load_fold

        with self.cache.lock:
            if directory not in self.cache.models:
                loaded = load_fold(directory, self.device)
                self.cache.models[directory] = (loaded.model, loaded.offset, loaded.scale)
                # copied before any thread has it: a deep copy of the model itself could meet a
                # CAM hook another thread is adding (and keep it, with that thread's tensors)
                self.cache.templates[id(loaded.model)] = copy.deepcopy(loaded.model)
                self.cache.loads += 1
            return self.cache.models[directory]

    def images(self, rows: np.ndarray) -> np.ndarray:
        key = np.asarray(rows, dtype=np.int64).tobytes()
        if key not in self._images:
            self._images[key] = self.dataset.images(rows).astype(np.float32)
        return self._images[key]

    def score(
        self, fold_dirs, cells, methods, trial_id, seed, precision, prototypes=True, head=True
    ):
        """:func:`sample_scores` with this context."""
        return sample_scores(
            fold_dirs,
            None,
            cells,
            methods,
            trial_id,
            seed,
            precision,
            prototypes,
            context=self,
            head=head,
        )

    def stats(self) -> dict:
        return {"loads": self.loads, "random_copies": self.copies_made}


def sample_scores(
    fold_dirs: dict[int, str],
    dataset_dir: str | None,
    cells: pd.DataFrame,
    methods: dict[str, dict],
    trial_id: str,
    seed: int,
    precision: str,
    prototypes: bool = True,
    context: QualityContext | None = None,
    head: bool = True,
) -> list[dict]:
    """Deletion/insertion and randomisation scores of one trial's ``methods`` on sampled cells,
    and its prototype diversity when ``prototypes`` (a prototype model). ``context`` holds the
    dataset and loaded models between calls (default: a new one on ``dataset_dir``); ``head``:
    with the head-only randomisation score (else its rows read ``learned_head_skipped``)."""
    context = context or QualityContext(dataset_dir)
    job = ScoreJob(fold_dirs, methods, trial_id, seed, prototypes, head)
    return job.rows([job.fold_entries(context, item) for item in cells.groupby("fold")])


@dataclasses.dataclass(frozen=True)
class ScoreJob:
    """One trial's ``methods`` scored on the sampled cells: :meth:`fold_entries` per fold (the
    folds are independent: :func:`score_locally` spreads them over its threads), then
    :meth:`rows` from every fold's entries, in fold order."""

    fold_dirs: dict[int, str]
    methods: dict[str, dict]
    trial_id: str
    seed: int
    prototypes: bool = True
    head: bool = True

    @property
    def sanity_config(self) -> SanityConfig:
        return SanityConfig(seed=self.seed, head_only=self.head)

    def cost(self, cells: int) -> int:
        """Passes per cell of the methods (:func:`method_passes`) times ``cells``: how long one
        fold's work takes against another's."""
        from ..methods import method_passes

        return cells * sum(method_passes(m, options) for m, options in self.methods.items())

    def fold_entries(self, context: QualityContext, item) -> list[tuple[tuple[str, str], dict]]:
        """The records of one ``(fold, cells)`` group: ``[(key, record)]`` in method order."""
        import torch
        from cytotune.engine.data.augment import normalize
        from cytotune.search_spaces.models import capabilities_of

        from ..methods import create_explainer
        from ..methods.smoothgrad import call_limit
        from .worker import layer_for

        device, m = context.device, context.dataset.manifest
        masks, evidence, has_evidence = context.masks, context.evidence, context.has_evidence
        sanity_config = self.sanity_config
        randomize = context.randomized(self.trial_id)
        fold, group = item
        entries: list[tuple[tuple[str, str], dict]] = []
        rows = group["row"].to_numpy()
        model, offset, scale = context.model(str(self.fold_dirs[int(fold)]))
        x = normalize(torch.from_numpy(context.images(rows)).to(device), offset, scale)
        takes_mask = capabilities_of(model).takes_mask
        fk = {}
        if takes_mask and masks is not None:
            fk = {"mask": torch.from_numpy(masks[rows]).float()[:, None].to(device)}
        with torch.no_grad():
            output = model(x, **fk).float()
        classification = m.task == "classification"
        target = (
            output.argmax(1)
            if classification
            else torch.zeros(len(rows), dtype=torch.long, device=device)
        )

        # perturbed batches mix images, so a per-image mask cannot follow them: score unmasked
        def score_fn(images, model=model, softmax=classification):
            out = model(images).float()
            return torch.softmax(out, 1) if softmax else out

        cell_masks = masks[rows] if masks is not None else None
        for method, options in self.methods.items():
            options = dict(options)
            layer = layer_for(method, model, tuple(x.shape[1:]), options.pop("layer", None))

            def attribute(
                m, method=method, layer=layer, options=options, x=x, target=target, fk=fk
            ):
                explainer = create_explainer(method, m, layer, **options)
                return explainer.attribute(x, target=target, forward_kwargs=fk)

            def scored(attribute=attribute, score_fn=score_fn):
                with check_precision(device.type):  # the check means the same on CPU and GPU
                    a = attribute(model).detach().float()
                check = sanity_check(
                    attribute,
                    model,
                    sanity_config,
                    trained_maps=a,
                    masks=cell_masks,
                    randomize=randomize,
                )
                faith = deletion_insertion(
                    score_fn, x, a, steps=16, baseline="blur", target=target, batch_size=256
                )
                return a, check, faith

            try:
                with call_limit(QUALITY_CALL_VALUES):
                    a, check, faith = with_less_memory(scored)
            except torch.OutOfMemoryError:
                raise  # after its retries: the fold is tried again whole, or the stage fails
            except (RuntimeError, ValueError, TypeError):
                continue  # the map stage recorded why this method does not apply
            b = torch.from_numpy(check.random_maps)
            entries.append(
                (
                    (method, "all"),
                    {
                        "deletion_auc": faith["deletion_auc"],
                        "insertion_auc": faith["insertion_auc"],
                        "randomisation_spearman": check.rho,
                        "mass_evidence_trained": _inside(a, evidence, has_evidence, rows),
                        "mass_evidence_random": _inside(b, evidence, has_evidence, rows),
                        "sanity": check,
                    },
                )
            )
        if self.prototypes and capabilities_of(model).prototypes:
            div = prototype_diversity(model.prototypes.detach().cpu().numpy())
            entries.append(
                (
                    ("prototypes", "all"),
                    {
                        "n_distinct_prototypes": [div["n_distinct"]],
                        "duplicate_prototype_pairs": [div["n_duplicate_pairs"]],
                    },
                )
            )
        return entries

    def rows(self, folds: list[list[tuple[tuple[str, str], dict]]]) -> list[dict]:
        """The quality rows of every fold's entries (given in fold order)."""
        trial_id, sanity_config = self.trial_id, self.sanity_config
        collected: dict[tuple[str, str], list] = {}
        for entries in folds:
            for key, record in entries:
                collected.setdefault(key, []).append(record)
        out = []
        for (method, _), parts in collected.items():
            metrics = {k for p in parts for k, v in p.items() if v is not None and k != "sanity"}
            for metric in sorted(metrics):
                values = np.concatenate(
                    [np.asarray(p[metric], dtype=float) for p in parts if p.get(metric) is not None]
                )
                out.append(_row(trial_id, method, metric, values))
            if method != "prototypes":
                check = combine([p["sanity"] for p in parts], sanity_config)
                n = int(np.isfinite(check.rho).sum())
                for metric, value in check.metrics().items():
                    out.append({**_row(trial_id, method, metric, [value]), "n": n})
                out.append(_row(trial_id, method, "randomisation_passed", [float(check.passed)]))
                if parts[0]["mass_evidence_trained"] is not None:
                    t = np.concatenate([p["mass_evidence_trained"] for p in parts])
                    r = np.concatenate([p["mass_evidence_random"] for p in parts])
                    out.append(
                        _row(
                            trial_id,
                            method,
                            "evidence_ratio_vs_random",
                            [np.nanmean(t) / np.nanmean(r)],
                        )
                    )
        return out


def _gather(refs: list, progress: bool, desc: str) -> list:
    """``ray.get(refs)`` with a progress bar that moves as each task finishes."""
    import ray
    from tqdm.auto import tqdm

    pending = list(refs)
    with tqdm(total=len(refs), unit="task", desc=desc, disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            bar.update(len(done))
    return ray.get(refs)


def _has(dataset, column: str) -> bool:
    import pyarrow.parquet as pq

    return column in pq.read_schema(dataset.shard_paths[0]).names


def optional_masks(table, height: int, width: int):
    """Evidence masks and which rows have one, or ``(None, None)`` (see worker.optional_masks)."""
    from .worker import optional_masks as read

    return (None, None) if table is None else read(table, "evidence", height, width)


def _inside(maps, masks, valid, rows):
    """Mass inside the mask per sampled cell; NaN for cells without a mask; None without any."""
    if masks is None:
        return None
    mass = mass_inside(maps.cpu().numpy(), masks[rows])
    mass[~valid[rows]] = np.nan
    return mass


def actor_count(jobs: int, gpus: float, cpus: float, gpus_per_actor: float) -> int:
    """Quality actors: as many as fit (``gpus / gpus_per_actor`` on a GPU node, one per CPU
    otherwise), never more than there are jobs."""
    fit = int(gpus / gpus_per_actor) if gpus else int(cpus)
    return max(1, min(jobs, fit))


def assign(jobs: list, actors: int) -> list[int]:
    """The actor of each ``(trial, methods, prototypes)`` job (jobs in trial order): contiguous,
    balanced runs, so every actor gets as many jobs as the others (+-1) and the fewest trials
    (each trial's fold models load only on the actors that score one of its methods: 3 trials x
    5 methods on 4 actors load a trial's fold models 6 times, not 15 as one task per job did)."""
    n = len(jobs)
    return [i * actors // n for i in range(n)]


def needs_head(rows: list[dict], trial_id: str) -> bool:
    """Whether ``trial_id``'s model verdict needs the head-only score: its map score ``rows``
    hold no held-out balanced accuracy that decides it (:func:`held_out_decides`)."""

    def first(metric: str) -> float:
        values = [
            float(r["mean"])
            for r in rows
            if r["trial_id"] == trial_id and r["metric"] == metric and np.isfinite(r["mean"])
        ]
        return values[0] if values else float("nan")

    low, chance = first("heldout_balanced_accuracy_low"), first("chance_balanced_accuracy")
    return not held_out_decides(low, chance)


def score_on_actors(plan, config, sample, jobs, progress: bool = True) -> list[list[dict]]:
    """Run the ``(trial, methods, prototypes, head)`` jobs on a few long-lived ``QualityContext``
    actors (each reads the dataset once and loads each fold model once); results in job order."""
    import ray

    if not jobs:
        return []
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    n = actor_count(len(jobs), gpus, resources.get("CPU", 1), config.gpus_per_actor)
    actor_cls = ray.remote(QualityContext).options(
        num_gpus=config.gpus_per_actor if gpus else 0, num_cpus=1, max_restarts=0
    )
    actors = [actor_cls.remote(str(plan.dataset.path)) for _ in range(n)]
    try:
        refs = [
            actors[a].score.remote(
                t.fold_dirs, sample, methods, t.trial_id, config.seed, config.precision, *flags
            )
            for (t, methods, *flags), a in zip(jobs, assign(jobs, n))
        ]
        return _gather(refs, progress, desc=f"explain quality ({len(sample)} cells)")
    finally:
        for actor in actors:
            ray.kill(actor)


def score_locally(
    plan, config, sample, jobs, progress: bool = True, position: int = 0
) -> list[list[dict]]:
    """The ``(trial, methods, prototypes, head)`` jobs in this process (executor ``local``),
    results in job order. Each job's folds are tasks of their own, the costliest first
    (:meth:`ScoreJob.cost`), taken by whichever of the :func:`worker_devices`
    ``QualityContext`` s is free, each in a thread (on a GPU, a CUDA stream) of its own. One
    context per job left a trial's Integrated Gradients (50 passes a cell) going through its
    5 folds one by one at the MitoCheck job's end while its CAMs' contexts were idle.

    The contexts of one device share a :class:`FoldCache`: a trial's fold models load and its
    random copies are drawn once, and the copies go after its last job. The check's precision
    is set for the whole stage, so the threads' :func:`check_precision` scopes never restore
    TF32 under one another. Where ``plan`` has a ``study_dir``, each task's start and end are
    written to ``explain/workers/quality/`` (:class:`QualityTrace`)."""
    from tqdm.auto import tqdm

    if not jobs:
        return []
    trace = QualityTrace(getattr(plan, "study_dir", None))
    folds = list(sample.groupby("fold"))
    score_jobs = [
        ScoreJob(trial.fold_dirs, methods, trial.trial_id, config.seed, *flags)
        for trial, methods, *flags in jobs
    ]
    tasks = [(i, k) for i in range(len(jobs)) for k in range(len(folds))]
    if not tasks:  # no sampled cell
        return [[] for _ in jobs]
    tasks.sort(key=lambda t: -score_jobs[t[0]].cost(len(folds[t[1]][1])))  # stable: job order
    devices = worker_devices()[: len(tasks)]
    caches = {device: FoldCache(one_trial=False) for device in dict.fromkeys(devices)}
    contexts = [QualityContext(str(plan.dataset.path), d, caches[d]) for d in devices]
    # one model loaded here first: its imports (timm: about 900 modules) then run in one thread
    # instead of in every context's thread at once, fighting over the GIL and the import lock
    first = score_jobs[tasks[0][0]]
    contexts[0].model(first.fold_dirs[int(folds[tasks[0][1]][0])])
    trace.mark("ready")
    left = Counter(job.trial_id for job in score_jobs)  # its copies go with its last job
    parts: list[list] = [[None] * len(folds) for _ in jobs]
    folds_left = [len(folds)] * len(jobs)
    fold_tasks = Counter((score_jobs[i].trial_id, k) for i, k in tasks)  # a fold model's tasks
    counting = threading.Lock()
    out: list = [None] * len(jobs)
    desc = f"explain quality ({len(sample)} cells)"
    with (
        check_precision(contexts[0].device.type),
        tqdm(
            total=len(jobs), unit="task", desc=desc, disable=not progress, position=position
        ) as bar,
    ):

        def score_task(context, task) -> None:
            i, k = task
            job = score_jobs[i]
            start = time.time()
            entries = with_less_memory(lambda: job.fold_entries(context, folds[k]), attempts=2)
            trace.task(job, folds[k], contexts.index(context), start)
            with counting:
                parts[i][k] = entries
                folds_left[i] -= 1
                complete = not folds_left[i]
                fold_tasks[job.trial_id, k] -= 1
                fold_done = not fold_tasks[job.trial_id, k]
            if fold_done:
                for cache in caches.values():
                    cache.release_fold(job.trial_id, str(job.fold_dirs[int(folds[k][0])]))
            if not complete:
                return
            out[i] = job.rows(parts[i])
            with counting:
                parts[i] = []
                left[job.trial_id] -= 1
                if not left[job.trial_id]:
                    for cache in caches.values():
                        cache.release(job.trial_id)
            bar.update(1)

        list(in_threads(tasks, contexts, score_task, ahead=len(tasks)))
    trace.write(devices)
    return out


class QualityTrace:
    """When each quality task (one job's methods on one fold's cells) ran, on which context,
    the calls it made again after running out of memory and the GPU memory its process
    reserved at most (since the process started): ``explain/workers/quality/<pid>-<id>.json``
    under ``study_dir`` (None: nothing is written). Read by bench/explain_timeline.py, beside
    the map workers' records, where the quality's end shows."""

    def __init__(self, study_dir) -> None:
        self.directory = Path(study_dir) / "explain" / "workers" / "quality" if study_dir else None
        self.record: dict = {"pid": os.getpid(), "started": time.time(), "tasks": []}
        self.retries_before = memory_retries()
        self.lock = threading.Lock()

    def mark(self, name: str) -> None:
        self.record[name] = time.time()

    def task(self, job: ScoreJob, fold_item, context: int, start: float) -> None:
        fold, group = fold_item
        entry = {
            "trial_id": job.trial_id,
            "methods": list(job.methods),
            "fold": int(fold),
            "cells": len(group),
            "context": context,
            "start": start,
            "end": time.time(),
        }
        with self.lock:
            self.record["tasks"].append(entry)

    def write(self, devices: list[str]) -> None:
        if self.directory is None:
            return
        import torch

        self.record["end"] = time.time()
        self.record["memory_retries"] = memory_retries() - self.retries_before
        self.record["max_memory_gib"] = {
            d: round(torch.cuda.max_memory_reserved(torch.device(d)) / 2**30, 2)
            for d in dict.fromkeys(devices)
            if d.startswith("cuda")
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(self.record))


def clear_traces(study_dir) -> None:
    """Remove the previous run's :class:`QualityTrace` records (a run writes its own)."""
    directory = Path(study_dir) / "explain" / "workers" / "quality"
    for path in directory.glob("*.json") if directory.is_dir() else ():
        path.unlink(missing_ok=True)


def run_quality(
    plan: ExplainPlan,
    config: ExplainConfig,
    state: ExplainState,
    progress: bool = True,
    maps_ready=None,
) -> pd.DataFrame:
    """Score every (trial, method) with maps; sample scores run in this process (executor
    ``local``) or on a few Ray actors.

    Each trial is a part of its own (``quality/<trial>``): a trial added to the top-k is scored
    alone, the others keep their rows.

    ``maps_ready``: the wait for a maps stage running beside this one. With the local executor
    the sampled cells are then scored first, for every method, while the maps are computed
    (they need only the fold models); which methods have maps, the maps' own scores and whether
    a trial needs its head-only score (:func:`needs_head`, from the maps' held-out accuracy)
    come after. A trial that turns out to need it is scored again with it. The rows are those
    of a stage run after the maps."""
    from cytotune.engine.cluster import ensure_ray

    path = explain_dir(plan.study_dir) / "quality.parquet"
    key = (
        config.maps_key()
        + f"-q{config.quality_cells}-"
        + "-".join(config.method_key(m) for m in config.method_names)
        + ("-head" if config.head_check else "")
    )
    previous = empty_index("quality") if config.overwrite else read_index(plan.study_dir, "quality")
    kept = {
        t.trial_id
        for t in plan.trials
        if state.done(f"quality/{t.trial_id}", key) and (previous["trial_id"] == t.trial_id).any()
    }
    todo = [t for t in plan.trials if t.trial_id not in kept]
    rows: list[dict] = previous[previous["trial_id"].isin(kept)].to_dict("records")
    if not todo:
        if maps_ready is not None:
            maps_ready()
        return pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    local = resolve_executor(config) == "local"
    clear_traces(plan.study_dir)
    sample = None
    if config.quality_cells:
        sample = plan.cells.sample(
            n=min(config.quality_cells, len(plan.cells)), random_state=config.seed
        )
    early = {}
    if maps_ready is not None and local and sample is not None:
        from .processes import map_in_threads, side_stages_in_processes, wait_for_maps

        data = str(plan.dataset.path)
        if side_stages_in_processes():  # the trials dealt out to processes of their own
            wait_for_maps(state)
            n = min(len(todo), quality_processes())
            shares = [
                (data, config, sample, todo[i::n], progress and i == 0, str(plan.study_dir))
                for i in range(n)
            ]

            def share_scores(*share) -> dict:  # each share's end marked: where the stage waits
                scored = early_in_process(*share)
                state.mark("quality/samples/" + "+".join(t.trial_id for t in share[3]))
                return scored

            early = {}
            for part in map_in_threads(share_scores, shares, n):
                early.update(part)
        else:
            early = early_sample_scores(data, config, sample, todo, progress, str(plan.study_dir))
        state.mark("quality/samples")
    if maps_ready is not None:
        maps_ready()
        state.mark("quality/maps_ready")
    available: dict[str, dict[str, dict]] = {}
    for trial in todo:
        for method in config.method_names:
            if maps_path(plan.study_dir, trial.trial_id, method).exists():
                rows += map_scores(plan, trial.trial_id, method, config.split)
                available.setdefault(trial.trial_id, {})[method] = config.method_options[method]
    if sample is not None:
        if not local:
            ensure_ray(config.address)
        head = {t.trial_id: config.head_check or needs_head(rows, t.trial_id) for t in todo}
        jobs = [
            (t, {method: options}, method == list(available[t.trial_id])[-1], head[t.trial_id])
            for t in todo  # prototypes once per trial, with its last method
            for method, options in available.get(t.trial_id, {}).items()
        ]
        results: list = [early_rows(early, job, config.head_check) for job in jobs]
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:  # all of them without an early run
            score = score_locally if local else score_on_actors
            fresh = score(plan, config, sample, [jobs[i] for i in missing], progress)
            for i, result in zip(missing, fresh, strict=True):
                results[i] = result
        for result in results:
            rows += result
        state.mark("quality/scored")
    table = pd.DataFrame(rows, columns=QUALITY_COLUMNS)
    write_frame(table, path)
    for trial in todo:
        state.finish(
            f"quality/{trial.trial_id}", key, rows=int((table.trial_id == trial.trial_id).sum())
        )
    return table


def early_in_process(*args) -> dict:
    """:func:`early_sample_scores` in a Python process of its own (:func:`call_in_process`)."""
    from .processes import call_in_process

    return call_in_process(early_sample_scores, *args, name="cytotune-explain-quality")


def early_sample_scores(
    dataset_path: str, config, sample, trials, progress: bool = True, study_dir: str | None = None
) -> dict:
    """Sample scores of every configured method of ``trials`` without the head-only score
    (unless ``head_check``), before the maps say which methods apply: ``{(trial id, method):
    rows}``, prototype rows under ``(trial id, "prototypes")``. Arguments and result pickle: it
    may run in a process of its own. ``study_dir``: where its tasks' timings go (QualityTrace)."""
    # all score_locally reads
    plan = SimpleNamespace(dataset=SimpleNamespace(path=dataset_path), study_dir=study_dir)
    last = config.method_names[-1]
    jobs = [
        (t, {m: config.method_options[m]}, m == last, config.head_check)
        for t in trials
        for m in config.method_names
    ]
    out: dict = {}
    for (trial, methods, *_), result in zip(
        jobs, score_locally(plan, config, sample, jobs, progress, position=1), strict=True
    ):
        for row in result:
            method = row["method"] if row["method"] == "prototypes" else next(iter(methods))
            out.setdefault((trial.trial_id, method), []).append(row)
        out.setdefault((trial.trial_id, next(iter(methods))), [])
    return out


def early_rows(early: dict, job, head_check: bool) -> list[dict] | None:
    """The rows an early run scored for ``job`` (a :func:`run_quality` job), or None where
    there was none or the job needs the head-only score it left out."""
    trial, methods, prototypes, head = job
    method = next(iter(methods))
    scored = early.get((trial.trial_id, method))
    if scored is None or head != head_check:
        return None
    return scored + (early.get((trial.trial_id, "prototypes"), []) if prototypes else [])
