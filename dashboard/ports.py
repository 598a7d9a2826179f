"""Is the dashboard's port free, and if not, who holds it: checked before Dash starts, so a second
dashboard fails at once with the fix instead of printing its URL and then "Address already in use".
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

LISTEN = "0A"  # TCP state of a listening socket in /proc/net/tcp*


def port_in_use(host: str, port: int) -> bool:
    """True when ``host:port`` cannot be bound (another server listens there).

    Binds the way the dashboard's server does (SO_REUSEADDR), so a port that only has
    connections in TIME_WAIT counts as free, exactly as it is for the server.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port_near(host: str, port: int, tries: int = 20) -> int | None:
    """The first free port after ``port`` (None when the next ``tries`` are all taken)."""
    return next((p for p in range(port + 1, port + 1 + tries) if not port_in_use(host, p)), None)


def port_holder(port: int) -> tuple[int, str] | None:
    """``(pid, command line)`` of the process listening on ``port``, or None when it cannot be
    found (another user's process, no /proc, no psutil)."""
    try:
        import psutil
    except ImportError:
        return _proc_holder(port)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
                if conn.pid is None:
                    return None
                return conn.pid, " ".join(psutil.Process(conn.pid).cmdline())
    except (psutil.Error, OSError):
        return _proc_holder(port)
    return None


def _proc_holder(port: int) -> tuple[int, str] | None:
    """/proc/net/tcp(6) gives the listening socket's inode; /proc/PID/fd the process holding it."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
            if any(os.readlink(fd) in inodes for fd in fds):
                cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                return int(pid_dir.name), cmdline.strip()
        except OSError:  # gone, or another user's process
            continue
    return None


def busy_port_message(host: str, port: int) -> str:
    """What to tell the user when ``port`` is taken: who holds it and which --port is free."""
    holder = port_holder(port)
    who = ""
    if holder is not None:
        pid, cmdline = holder[0], " ".join(holder[1].split())
        short = cmdline if len(cmdline) <= 120 else cmdline[:117] + "..."
        who = f" by process {pid} ({short}); stop it (kill {pid}) or"
    else:
        who = "; stop the process that holds it or"
    free = free_port_near(host, port)
    other = f"pass another port, e.g. --port {free}" if free else "pass another --port"
    return f"port {port} on {host} is already in use{who} {other}"
