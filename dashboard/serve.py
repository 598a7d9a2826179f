"""Serve the dashboard from several worker processes on one listening socket.

One Python process runs one callback at a time per core at best (the GIL), and a page view is
mostly Python (pandas, component trees, JSON). The parent binds the port, then forks
``workers`` children that each build their own app (their own caches) and accept connections
from the shared socket with a thread per request; the kernel spreads connections over them.
Where ``os.fork`` is missing (Windows) or ``workers`` is 1 it serves from this process.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

# Caches, rendered tiles and memoised views are per worker: a handful of workers is plenty.
MAX_WORKERS = 8


def default_workers() -> int:
    """One worker per core, at least 1 and at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def serve(make_app, host: str, port: int, workers: int = 1) -> None:
    """Serve ``make_app()`` (a Dash app) on ``host:port`` until interrupted or terminated."""
    from werkzeug.serving import make_server

    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 1..{MAX_WORKERS}, got {workers}")
    if workers == 1 or not hasattr(os, "fork"):
        make_server(host, port, make_app().server, threaded=True).serve_forever()
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=256)
    listener.set_inheritable(True)
    children: list[int] = []
    for _ in range(workers):  # fork before any request: no table read, no pyarrow threads yet
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                server = make_server(
                    host, port, make_app().server, threaded=True, fd=listener.fileno()
                )
                server.serve_forever()
            except BaseException as exc:  # noqa: BLE001 - reported, then the worker exits
                print(f"dashboard worker {os.getpid()}: {exc!r}", file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    listener.close()

    def stop(*_, code: int = 0):
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        for child in children:
            while time.time() < deadline:
                try:
                    if os.waitpid(child, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                time.sleep(0.05)
            else:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # not SystemExit: interpreter shutdown can wait on library threads

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:  # a worker that dies takes the dashboard down with it: no silent half-service
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        if pid in children:
            children.remove(pid)
            print(f"dashboard worker {pid} exited; stopping the others", file=sys.stderr)
            stop(code=1)
