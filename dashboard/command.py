"""Browse a study (or a folder of studies) in the web dashboard: leaderboard, trials, family
comparisons with paired tests, and explanations. Reads the results store only; refreshes while
a search is still running.

Examples:
  cytotune dashboard --study runs/demo/studies/demo
  cytotune dashboard --study runs/studies --port 8060
  cytotune dashboard --study runs/studies --host 0.0.0.0 --auth "$(openssl rand -hex 16)"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--study",
        required=True,
        metavar="DIR",
        help="a study directory, or a folder holding several",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument(
        "--auth",
        metavar="TOKEN",
        default=os.environ.get("CYTOTUNE_DASHBOARD_TOKEN"),
        help="require this token on every request (open the URL with ?token=TOKEN once); "
        "default: $CYTOTUNE_DASHBOARD_TOKEN",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="server processes, each with its own caches (default: one per core, at most 4)",
    )
    parser.add_argument(
        "--refresh",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between checks for new results (default 5)",
    )


def run(args: argparse.Namespace) -> int:
    from .ports import busy_port_message, port_in_use

    root = Path(args.study)
    if not root.is_dir():
        print(
            f"error: --study {root} is not a directory (a study directory or a folder of studies)",
            file=sys.stderr,
        )
        return 2
    if port_in_use(args.host, args.port):  # before Dash prints a URL that is not ours
        print(
            f"cytotune dashboard: error: {busy_port_message(args.host, args.port)}", file=sys.stderr
        )
        return 2
    from .app import create_app

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.auth:
        print(
            f"warning: serving on {args.host} without --auth: anyone who can reach this port can read the study",
            file=sys.stderr,
        )
    from .serve import MAX_WORKERS, default_workers, serve

    workers = default_workers() if args.workers is None else args.workers
    if not 1 <= workers <= MAX_WORKERS:
        print(f"error: --workers must be 1..{MAX_WORKERS}, got {workers}", file=sys.stderr)
        return 2
    create_app(str(root), token=args.auth, refresh_s=args.refresh)  # fail here, before forking
    url = f"http://{'localhost' if args.host in ('127.0.0.1', '::1') else args.host}:{args.port}/"
    print(
        f"cytotune dashboard: {url}"
        + ("?token=<your token>" if args.auth else "")
        + f" ({workers} worker{'s' if workers > 1 else ''})",
        flush=True,
    )
    serve(
        lambda: create_app(str(root), token=args.auth, refresh_s=args.refresh),
        args.host,
        args.port,
        workers,
    )
    return 0
