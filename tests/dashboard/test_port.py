"""A second dashboard on a busy port fails at once (exit 2), naming the port, who holds it and
a --port that is free, before Dash prints a URL."""

from __future__ import annotations

import os
import socket

import pytest
from cytotune.dashboard.ports import port_holder, port_in_use
from cytotune.engine.cli import main


@pytest.fixture
def busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_busy_port_is_found_with_its_process(busy_port):
    assert port_in_use("127.0.0.1", busy_port)
    holder = port_holder(busy_port)
    assert holder is not None
    assert holder[0] == os.getpid()


def test_second_dashboard_fails_at_once_naming_port_process_and_fix(
    busy_port, tmp_path, capsys, monkeypatch
):
    """At once: the port is checked before an app is built or a server started (either would
    block or take the address); the test watches for those calls, not the clock."""
    from cytotune.dashboard import app, serve

    reached = []
    monkeypatch.setattr(app, "create_app", lambda *a, **k: reached.append("create_app"))
    monkeypatch.setattr(serve, "serve", lambda *a, **k: reached.append("serve"))
    code = main(["dashboard", "--study", str(tmp_path), "--port", str(busy_port)])
    out, err = capsys.readouterr()
    assert code == 2
    assert reached == []
    assert f"port {busy_port} on 127.0.0.1 is already in use" in err
    assert f"process {os.getpid()}" in err
    assert f"kill {os.getpid()}" in err
    assert "--port " in err
    assert "http://" not in out + err
    assert "Dash is running" not in out + err


def test_free_port_is_free():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not port_in_use("127.0.0.1", port)
