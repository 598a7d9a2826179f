"""Connecting to Ray: an existing cluster by address, or a local instance started on demand."""

from __future__ import annotations

import os


def ensure_ray(
    address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True
) -> None:
    """Initialise Ray once per process.

    Args:
        address: "auto", "HOST:PORT" or "ray://HOST:PORT" of a running cluster; None starts a local
            Ray instance (the laptop default) unless RAY_ADDRESS is set.
        num_cpus: CPUs for a local instance (default: all).
        quiet: keep Ray's worker logs and Ray Data progress bars out of the terminal.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {
        "include_dashboard": False,
        "log_to_driver": not quiet,
        "configure_logging": True,
        "logging_level": "ERROR" if quiet else "INFO",
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
    if quiet:
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
