"""Launch or resume a study: folds, search space, Ray Tune + Optuna + ASHA, results store."""

from __future__ import annotations

import os
import time

from cytotune.engine.data.folds import list_folds, load_folds, make_folds, save_folds

from .callbacks import FailFast, FailFastStopper, LiveTable, StoreCallback
from .deadline import DEADLINE
from .leaderboard import format_leaderboard
from .store import StudyStore
from .study import StudyConfig, load_plugins, load_spaces
from .trainable import run_trial


class SearchFailed(ValueError):
    """The study stopped because its first trials all failed; the message holds the error."""


def prepare_folds(study: StudyConfig):
    """Load the study's fold set, creating it when the dataset has none of that name."""
    spec = study.folds
    name = spec.resolved_name
    if name in list_folds(study.dataset):
        folds = load_folds(study.dataset, name)
        if (folds.k, folds.group) != (spec.k, spec.group) and spec.method != "leave-one-group-out":
            raise ValueError(
                f"fold set {name!r} in {study.dataset} has k={folds.k}, group={folds.group}, but the study asks "
                f"for k={spec.k}, group={spec.group}; give folds.name another name"
            )
        return folds
    folds = make_folds(
        study.dataset,
        k=spec.k,
        group=spec.group,
        stratify=spec.stratify,
        method=spec.method,
        seed=spec.seed,
        name=name,
    )
    save_folds(study.dataset, folds)
    return folds


def check_well_column(study: StudyConfig) -> None:
    """``well_column`` must be a column of the dataset (else every trial would fail on it)."""
    if not study.well_column:
        return
    from cytotune.engine.data import CellDataset

    columns = CellDataset(study.dataset).metadata().columns
    if study.well_column not in columns:
        usable = [c for c in columns if c not in ("cell_id", "dtype", "shape", "source")]
        raise ValueError(
            f"well_column {study.well_column!r} is not a column of {study.dataset}; "
            f"columns: {', '.join(usable)}"
        )


def applicable_space(space, study: StudyConfig, verbose: bool = True):
    """The space without the families that cannot apply to the dataset (a model family that
    needs more channels than the dataset has), each left out with the reason printed."""
    from cytotune.engine.data import Manifest
    from cytotune.search_spaces.models import get_family

    channels = Manifest.load(study.dataset).num_channels
    kept, dropped = [], []
    for family in space.families:
        need = getattr(get_family(family).model_cls, "min_in_chans", 1)
        (kept if channels >= need else dropped).append((family, need))
    if not dropped:
        return space
    if not kept:
        raise ValueError(
            f"no family of space {space.name!r} applies to {study.dataset} ({channels} channel(s)): "
            + ", ".join(f"{f} needs >= {n} channels" for f, n in dropped)
        )
    if verbose:
        for family, need in dropped:
            print(
                f"leaving out family {family}: it needs >= {need} channels, the dataset has {channels}"
            )
    return space.restricted([f for f, _ in kept])


def max_concurrent(study: StudyConfig) -> int | None:
    """The study's concurrency; with the Ray Data loader, capped so one CPU stays free for its
    read and filter tasks (trials that reserve every CPU would wait on them forever)."""
    import ray

    wanted = study.budget.max_concurrent
    if study.effective_loader != "ray":
        return wanted
    cpus = int(ray.cluster_resources().get("CPU", 1))
    cap = max(1, int((cpus - 1) // study.resources.cpus))
    return cap if wanted is None else min(wanted, cap)


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def check_resources(study: StudyConfig) -> None:
    """Refuse a study whose trials could never be scheduled (instead of waiting forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    wanted = study.resources
    autoscaling = os.environ.get("CYTOTUNE_AUTOSCALING") == "1"
    if not autoscaling and (wanted.cpus > cpus or wanted.gpus > gpus):
        raise ValueError(
            f"each trial asks for {wanted.cpus:g} CPU and {wanted.gpus:g} GPU, but the largest Ray node has "
            f"{cpus:g} CPU and {gpus:g} GPU; lower resources in the study file (or set CYTOTUNE_AUTOSCALING=1 "
            "on an autoscaling cluster whose workers will have them)"
        )


WRAP_UP_RESERVE_S = 3.0  # stopping trials, the last store flush, the leaderboard


def _tune_budget(study: StudyConfig, entered: float) -> float | None:
    """Tune's time budget: what is left of the study's after the set-up, less the wrap-up."""
    budget = study.budget.time_budget_s
    if budget is None:
        return None
    return max(1.0, budget - (time.time() - entered) - WRAP_UP_RESERVE_S)


def create_scheduler(study: StudyConfig):
    """ASHA over folds (rungs after 1, 2, 4, ... folds: halving) or over epochs (rungs after
    grace, 3 x grace, ... epochs), as ``budget.race`` says."""
    from ray.tune.schedulers import ASHAScheduler

    objective, budget = study.objectives[0], study.budget
    if budget.race == "folds":
        race = {"time_attr": "folds_done", "max_t": study.folds.k, "grace_period": 1}
        race["reduction_factor"] = 2
    else:
        race = {"time_attr": "epoch", "max_t": budget.max_epochs}
        race.update(grace_period=budget.grace_epochs, reduction_factor=3)
    return ASHAScheduler(metric=objective.key, mode=objective.mode, **race)


def _searcher(study: StudyConfig, space, store: StudyStore):
    import warnings

    import optuna

    from .resumable import ResumableOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=study.seed, multivariate=True, group=True),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=study.seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=study.seed),
    }
    metrics = [o.key for o in study.objectives]
    modes = [o.mode for o in study.objectives]
    sampler = "nsga2" if study.multi_objective and study.sampler == "tpe" else study.sampler
    storage = optuna.storages.RDBStorage(store.optuna_url) if store.optuna_url else None
    return ResumableOptunaSearch(
        space=space.define_by_run,
        metric=metrics if study.multi_objective else metrics[0],
        mode=modes if study.multi_objective else modes[0],
        points_to_evaluate=space.family_defaults(),
        sampler=samplers[sampler](),
        storage=storage,
        study_name=study.name,
        seed=study.seed,
    )


def run_search(
    study: StudyConfig,
    address: str | None = None,
    resume: bool = False,
    verbose: bool = True,
    started: float | None = None,
) -> StudyStore:
    """Run (or resume) a study and return its store.

    ``budget.time_budget_s`` bounds the whole call, counted from ``started`` (default: now;
    the CLI passes its own start): the time spent before Tune starts (imports, Ray start-up,
    folds, store) and a reserve for the wrap-up come off Tune's own budget.
    """
    entered = started or time.time()
    from cytotune.engine.cluster import TRIAL_MODULES, ensure_ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    store = StudyStore(study.study_dir)
    if store.exists() and not resume:
        raise FileExistsError(
            f"study {study.name!r} already exists at {store.uri}; pass --resume to continue it or --name to start another"
        )
    if resume and not store.exists():
        raise FileNotFoundError(
            f"no study {study.name!r} at {store.uri} to resume; drop --resume to start it"
        )
    load_plugins(study.plugins)  # their families may be in the space
    folds = prepare_folds(study)
    check_well_column(study)
    space = applicable_space(load_spaces(study.space), study, verbose)
    ensure_ray(address, preload=TRIAL_MODULES)
    ray_ready = time.time() - entered
    check_resources(study)  # before the store exists: a refused study leaves nothing "running"
    if not resume:
        from cytotune.engine.data import Manifest

        store.create(
            study.to_yaml(),
            {
                "name": study.name,
                "dataset": study.dataset,
                "dataset_hash": Manifest.load(study.dataset).content_hash,
                "folds": folds.name,
                "fold_hash": folds.hash,
                "space": space.to_dict(),
                "objectives": [o.__dict__ for o in study.objectives],
            },
        )
    else:
        store.update_status(status="running", resumed=time.time())
    objective = study.objectives[0]
    scheduler = create_scheduler(study) if study.scheduler == "asha" else FIFOScheduler()
    resources = {"cpu": study.resources.cpus, "gpu": study.resources.gpus}
    from cytotune.search_spaces.models.plugins import plugin_sources

    # plugin files travel with the trials: a worker on another node need not have them
    sources = plugin_sources(study.plugins)
    trainable = tune.with_parameters(run_trial, study=study, plugin_sources=sources)
    trainable = tune.with_resources(trainable, resources)
    fail_fast = FailFast()
    callbacks = [StoreCallback(store, study), fail_fast] + ([LiveTable(study)] if verbose else [])
    run_config = tune.RunConfig(
        name="tune",
        storage_path=store.path if store.is_local else study.study_dir,
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        # two kept: the experiment snapshot a resume starts from may still name the previous one
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
        stop=FailFastStopper(fail_fast),
        verbose=0,
    )
    # snapshot Tune's experiment state often, so a killed driver loses little on --resume
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault(
        "RAY_AIR_NEW_OUTPUT", "0"
    )  # with verbose=0: no Tune boxes, our table instead
    started = time.time()
    tune_budget = _tune_budget(study, entered)
    if resume and tune.Tuner.can_restore(store.tune_dir):
        tuner = tune.Tuner.restore(
            store.tune_dir, trainable, resume_unfinished=True, resume_errored=True, param_space=None
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(study, space, store),
                scheduler=scheduler,
                num_samples=study.budget.trials,
                max_concurrent_trials=max_concurrent(study),
                time_budget_s=tune_budget,
                reuse_actors=True,
                trial_dirname_creator=_trial_dirname,  # a finished trial's worker takes the next one (no actor start-up)
            ),
            run_config=run_config,
        )
    # where the command's start-up went (seconds from its start), for `study.json` readers
    store.update_status(startup={"ray_ready_s": ray_ready, "tune_start_s": time.time() - entered})
    DEADLINE.start(tune_budget)
    tuner.fit()
    if fail_fast.triggered:
        store.update_status(status="failed", finished=time.time(), error=fail_fast.errors[-1])
        raise SearchFailed(
            f"the first {len(fail_fast.errors)} trials all failed before reporting an epoch, so "
            f"the study stopped; last error: {fail_fast.errors[-1]} (every trial's error is in "
            f"{store.uri}/trials.parquet, column 'error'; fix it and run again with --resume)"
        )
    store.update_status(status="finished", finished=time.time(), wall_s=time.time() - started)
    if verbose:
        print()
        print(format_leaderboard(store, objective.metric, objective.mode))
        print(
            f"\nstudy: {store.uri}\nnext:  cytotune dashboard --study {store.uri}\n       cytotune pull --study {store.uri} --rank 1 --out bundle/"
        )
    return store
