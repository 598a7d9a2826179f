"""The explain job: plan, then the stages, each as soon as the stages it reads are done (the
prototype and attention figures need only the fold models: they run beside the maps; the
population and overlay stages read the maps: they run beside each other after them; the
quality stage scores its sampled cells beside the maps and reads them after). Every stage
skips what is already finished."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .attention import attention_in_process, run_attention
from .config import ExplainConfig
from .executor import resolve_executor, worker_devices
from .maps import run_maps
from .overlays import run_overlays
from .plan import ExplainPlan, build_plan
from .populations import run_population
from .processes import (
    discard_ready,
    discard_warm,
    overlay_processes_wanted,
    prestart,
    process_devices,
    side_processes_wanted,
    warm_processes,
)
from .prototypes import run_prototypes
from .scores import run_quality
from .state import ExplainState

# stage name -> function(plan, config, state, progress); started in this order
STAGES = {
    "maps": lambda plan, config, state, progress: run_maps(plan, config, state, progress),
    "population": lambda plan, config, state, progress, ready=None: run_population(
        plan, config, state, maps_ready=ready
    ),
    "quality": lambda plan, config, state, progress, ready=None: run_quality(
        plan, config, state, progress, maps_ready=ready
    ),
    "overlays": lambda plan, config, state, progress: run_overlays(plan, config, state),
    "prototypes": lambda plan, config, state, progress: run_prototypes(plan, config, state),
    "attention": lambda plan, config, state, progress: run_attention(plan, config, state),
}
# stages that start at once and wait for what they NEED themselves (a ``ready`` callable),
# after the work that needs none of it: quality scores its sampled cells beside the maps, the
# population stage draws its classes' mean crops
WAITS_INSIDE = ("quality", "population")
# the stages whose outputs a stage reads (when they run in the same job)
NEEDS = {
    "maps": (),
    "population": ("maps",),
    "quality": ("maps",),
    "overlays": ("maps",),
    "prototypes": (),
    "attention": (),
}
# stages that read nothing of another stage but wait for it to end, failed or not: the
# attention figures (a CPU forward and PNGs, about 7 s on the MitoCheck job) took the
# interpreter lock from the maps' start-up where they are drawn in this process; after the maps
# this process only waits for the stage processes of the tail. In a process of their own
# (:func:`~cytotune.explainers.job.attention.attention_in_process`) they go beside the maps.
AFTER = {"attention": ("maps",)}


def waits_after(name: str, config) -> tuple[str, ...]:
    """The stages ``name`` waits for (:data:`AFTER`), here."""
    if name == "attention" and attention_in_process(config):
        return ()
    return AFTER.get(name, ())


# what the overlays' processes are called (map_in_processes: "cytotune-explain-<stage>") and
# import ahead of their stage
OVERLAYS_PROCESS = "cytotune-explain-overlays"
OVERLAYS_IMPORTS = ("cytotune.explainers.job.overlays",)


def run_explain(
    config: ExplainConfig, progress: bool = True, log=print
) -> tuple[ExplainPlan, ExplainState]:
    """Run the explain job for ``config``; returns the plan and the final state."""
    # started first (or already, by the command: warm_early): their imports overlap this
    # process's plan and maps start
    try:
        warm_processes(side_processes_wanted(config))
        # the overlays' processes too: after the maps they only pick and draw (their cold
        # start and imports were part of the 2.2 s the MitoCheck job's overlays took)
        prestart(OVERLAYS_PROCESS, overlay_processes_wanted(config), OVERLAYS_IMPORTS)
        return _run_explain(config, progress, log)
    finally:
        try:
            discard_warm()
        finally:
            discard_ready()


def _run_explain(config: ExplainConfig, progress: bool, log) -> tuple[ExplainPlan, ExplainState]:
    plan = build_plan(config)
    state = ExplainState(plan.study_dir)
    state.update(
        status="running",
        config=config.to_dict(),
        trials=[
            {"trial_id": t.trial_id, "rank": t.rank, "family": t.family, plan.metric: t.value}
            for t in plan.trials
        ],
        cells=len(plan.cells),
        dataset=str(plan.dataset.path),
        marks={"command": process_started()},  # this run's step marks only
    )
    executor = resolve_executor(config)
    state.update(executor=executor)
    where = "on Ray actors"
    if executor == "local":
        groups = process_devices()
        devices = worker_devices(groups[0])
        where = f"in this process ({len(devices)} worker thread(s) on {', '.join(dict.fromkeys(devices))})"
        if len(groups) > 1:
            on = ", ".join(d for group in groups for d in group)
            share = "one per GPU" if len({g[0] for g in groups}) == len(groups) else "sharing GPUs"
            where = (
                f"in {len(groups)} processes, {share} ({len(devices)} worker threads each; {on})"
            )
    log(
        f"explaining {len(plan.trials)} trial(s) {[t.trial_id for t in plan.trials]} on "
        f"{len(plan.cells)} cells ({config.split} split) with {config.method_names}, {where}"
    )
    if not config.trials and len(plan.trials) < config.top_k:
        log(
            f"  (top {config.top_k} asked: only {len(plan.trials)} trial(s) have a model of every "
            "fold; trials stopped after fewer folds cannot explain every cell)"
        )
    run_stages(plan, config, state, progress, log)
    if "maps" in config.stages:
        record_layers(plan, config)
    failures = state.data.get("failures", {})
    for part, reason in failures.items():
        log(f"  not computed: {part}: {reason}")
    state.update(status="finished", finished=time.time())
    return plan, state


def process_started() -> float:
    """When this process started (epoch seconds; Linux: from /proc, so the interpreter's start
    and imports count; elsewhere: now): the ``command`` mark, where a job's start-up shows."""
    try:
        # the start in clock ticks since boot, the uptime in seconds
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


def run_stages(plan, config, state, progress: bool = True, log=print) -> None:
    """Every stage of ``config.stages`` in a thread of its own, each started once the stages it
    :data:`NEEDS` are finished (one of :data:`WAITS_INSIDE` at once, with a ``ready`` wait for
    them; its time includes the wait) and those it comes :data:`AFTER` have ended. The first failure (in :data:`STAGES` order) is raised
    after the stages that do not need the failed one have finished. The threads are daemons and
    the wait is interruptible: Ctrl-C stops the job at once (finished parts are kept; a rerun
    computes the rest), as it did when the stages ran in this thread."""
    from concurrent.futures import Future, wait

    names = [name for name in STAGES if name in config.stages]
    futures: dict[str, Future] = {}
    warm = getattr(state, "maps_warm", threading.Event())
    if "maps" not in names:
        warm.set()

    def run(name: str, needs: list[Future], future: Future) -> None:
        try:
            wait([futures[n] for n in waits_after(name, config) if n in futures])
            inside = name in WAITS_INSIDE and needs
            if not inside:
                for need in needs:
                    need.result()  # a failed stage fails the stages that read it
            start = time.perf_counter()
            if inside:
                STAGES[name](
                    plan, config, state, progress, ready=lambda: [n.result() for n in needs]
                )
            else:
                STAGES[name](plan, config, state, progress)
            if name == "maps":
                warm.set()
            seconds = time.perf_counter() - start
            state.time(f"stage/{name}", seconds)
            log(f"  {name:<11} {seconds:7.1f} s")
            future.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            if name == "maps":
                warm.set()
            future.set_exception(exc)

    for name in names:
        futures[name] = Future()
        needs = [futures[n] for n in NEEDS[name] if n in futures]
        threading.Thread(
            target=run, args=(name, needs, futures[name]), name=f"explain-{name}", daemon=True
        ).start()
    wait(list(futures.values()))
    for name in names:
        futures[name].result()


def record_layers(plan: ExplainPlan, config: ExplainConfig) -> dict:
    """Which layer each CAM method used per trial, its map size and the usable alternatives
    (``explain/layers.json``; the Explanations page shows it). Read from each trial's first
    fold model on the CPU."""
    import json

    from cytotune.engine.train.checkpoint import load_model

    from .verdicts import layers_path
    from .worker import layer_info, uses_layer

    cams = [m for m in config.method_names if uses_layer(m)]
    path = layers_path(plan.study_dir)
    out = json.loads(path.read_text()) if path.is_file() else {}
    if not cams:
        return out
    shape = tuple(plan.dataset.manifest.shape)
    for trial in plan.trials:
        model, _ = load_model(trial.fold_dirs[min(trial.fold_dirs)], "cpu")
        out[trial.trial_id] = {
            m: layer_info(m, model, shape, config.method_options[m].get("layer")) for m in cams
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out
