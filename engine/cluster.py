"""Connecting to Ray: an existing cluster by address, or a local instance started on demand."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

_STARTING = threading.Lock()  # stages of one explain job run side by side: one starts Ray

# What every Ray worker of a search imports as it starts, so a trial does not wait for torch/timm.
TRIAL_MODULES = ("cytotune.engine.search.trainable", "timm")


def ensure_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    quiet: bool = True,
    log: Callable[[str], None] | None = print,
    preload: tuple[str, ...] = (),
) -> None:
    """Initialise Ray once per process.

    Args:
        address: "auto", "HOST:PORT" or "ray://HOST:PORT" of a running cluster; None starts a local
            Ray instance (the laptop default) unless RAY_ADDRESS is set.
        num_cpus: CPUs for a local instance (default: all).
        quiet: keep Ray's worker logs and Ray Data progress bars out of the terminal.
        log: where to say that Ray is starting and when it is ready (None: say nothing); a
            local start takes 5-15 s, which should not pass in silence.
        preload: modules every Ray worker of this job imports as it starts (Ray's
            ``worker_process_setup_hook``), so the workers Ray starts ahead of time have torch
            and the trainable imported before the first trial lands on one. Opt-in with
            ``CYTOTUNE_PRELOAD=1``: it saved 2.4 s of a one-trial search on a 16-core GPU
            machine but made the demo's search 4x slower on 2 cores (158 s vs 40 s).
    """
    import ray

    with _STARTING:
        if not ray.is_initialized():
            _start_ray(address, num_cpus, quiet, log, preload)


def _start_ray(address, num_cpus, quiet, log, preload) -> None:
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    log = log or (lambda _message: None)
    if address is None:
        log("starting a local Ray instance (--address joins a running cluster) ...")
    else:
        log(f"connecting to the Ray cluster at {address} ...")
    start = time.perf_counter()
    kwargs = {
        "include_dashboard": False,
        "log_to_driver": not quiet,
        "configure_logging": True,
        "logging_level": "ERROR" if quiet else "INFO",
    }
    if preload and os.environ.get("CYTOTUNE_PRELOAD", "0") == "1":
        kwargs["runtime_env"] = {
            "worker_process_setup_hook": "cytotune.engine.cluster.preload_worker",
            "env_vars": {PRELOAD_ENV: ",".join(preload)},
        }
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConnectionError(
            f"cannot reach a Ray cluster at {address!r} ({exc}); start one with `ray up cluster.yaml` "
            "or leave --address out to run on a local Ray instance"
        ) from exc
    resources = ray.cluster_resources()
    log(
        f"Ray ready in {time.perf_counter() - start:.1f} s: {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs"
    )
    if quiet:
        quiet_ray_data()


PRELOAD_ENV = "CYTOTUNE_PRELOAD_MODULES"


def preload_worker() -> None:
    """Ray worker set-up hook: import the modules ``ensure_ray(preload=...)`` named."""
    import importlib

    for name in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        importlib.import_module(name)


def quiet_ray_data() -> None:
    """No Ray Data progress bars (cytotune draws its own) and no notice that they are off."""
    import logging

    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray Data warns "Progress bars disabled" (WARNING) once it runs with them off; that notice
    # is for Ray Data users, not ours: raise only that module's logger to ERROR.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
