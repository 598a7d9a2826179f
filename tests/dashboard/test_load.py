"""What keeps the dashboard fast under load (issue 15, item 5; bench/dashboard_load.py measures
it): figures built as plain dicts, views and tiles drawn once per version of their files, the
Explanations page drawn in one request, and several server processes on one port."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import plotly.graph_objects as go
import pytest
from cytotune.dashboard import memo
from cytotune.dashboard.app import create_app
from cytotune.dashboard.data import Catalog
from cytotune.dashboard.explain import Explanations
from cytotune.dashboard.pages import explanations, population, trial
from cytotune.explainers.job import layout as paths


@pytest.fixture
def alpha_copy(studies_root, tmp_path):
    """A private copy of the explained study (tests here change file times)."""
    shutil.copytree(studies_root / "alpha", tmp_path / "alpha")
    return Catalog(tmp_path / "alpha").get(None)


def _graphs(component) -> list[dict]:
    found = []
    for node in [component, *component._traverse()]:
        figure = getattr(node, "figure", None)
        if isinstance(figure, dict) and "data" in figure:
            found.append(figure)
    return found


def test_trial_and_population_figures_are_plain_dicts_not_go_figures(alpha_copy, monkeypatch):
    """go.Figure validates every property and deep-copies its template: 30-140 ms a figure,
    most of a page view. The pages must not build one; their dicts must still be figures that
    plotly.py accepts, with plotly.py's colours (plotly.js reads "Blues" reversed by name)."""
    study = alpha_copy
    trial_id = str(study.trials().sort_values("rank")["trial_id"].iloc[0])
    explained = next(iter(Explanations(study).methods()))

    def refuse(*args, **kwargs):
        raise AssertionError("a page view built a go.Figure")

    with monkeypatch.context() as patch:
        patch.setattr(go.Figure, "__init__", refuse)
        trial_page = trial.layout(None, study, {"arg": trial_id})
        explain_page = explanations.layout(None, study, {"trial": explained})
    figures = _graphs(trial_page) + _graphs(explain_page)
    heatmaps = [t for f in figures for t in f["data"] if t.get("type") == "heatmap"]
    assert len(figures) >= 6
    assert heatmaps
    for figure in figures:
        go.Figure(figure)  # raises on any property plotly.py does not know

    def steps(scale):
        return [(round(float(at), 9), colour) for at, colour in scale]

    reference = [steps(go.Heatmap(colorscale=n).colorscale) for n in ("Blues", "Viridis", "RdBu_r")]
    for heatmap in heatmaps:
        assert steps(heatmap["colorscale"]) in reference


def test_go_figure_pages_keep_the_template_by_name():
    """plotly.py validates a template handed over as a dict: 9x slower per go.Figure (compare)."""
    from cytotune.dashboard.pages import common

    assert common.FIG_LAYOUT["template"] == "plotly_white"
    assert common.DICT_LAYOUT["template"]["layout"]["plot_bgcolor"] == "white"


def test_a_view_is_drawn_once_per_version_of_the_study_files(alpha_copy):
    study, draws = alpha_copy, []

    def draw():
        draws.append(1)
        return len(draws)

    assert memo.view(study, "test-view", ("a",), draw) == 1
    assert memo.view(study, "test-view", ("a",), draw) == 1  # unchanged files: not redrawn
    assert memo.view(study, "test-view", ("b",), draw) == 2  # other arguments: another view
    target = study.path / "trials.parquet"
    stamp = target.stat().st_mtime_ns + 2_000_000_000
    os.utime(target, ns=(stamp, stamp))  # a search wrote new rows
    assert memo.view(study, "test-view", ("a",), draw) == 3
    assert memo.view(study, "test-view", ("a",), draw) == 3


def test_an_overlay_is_rendered_once_per_view_and_map_version(alpha_copy, monkeypatch):
    from cytotune.explainers.job import tiles

    calls = []
    real = tiles.render_tile
    monkeypatch.setattr(tiles, "render_tile", lambda *a, **k: calls.append(1) or real(*a, **k))
    explain = Explanations(alpha_copy)
    trial_id, methods = next(iter(explain.methods().items()))
    cell = str(explain.cells(trial_id, methods[0])["cell_id"].iloc[0])
    first = explain.render(trial_id, methods[0], cell)
    assert explain.render(trial_id, methods[0], cell) == first
    assert len(calls) == 1
    explain.render(trial_id, methods[0], cell, alpha=0.3)  # another view of the same map
    assert len(calls) == 2
    maps = paths.maps_path(alpha_copy.path, trial_id, methods[0])
    stamp = maps.stat().st_mtime_ns + 2_000_000_000
    os.utime(maps, ns=(stamp, stamp))  # the explain job published a new map table
    explain.render(trial_id, methods[0], cell)
    assert len(calls) == 3


def test_population_arrays_are_read_once_per_version(alpha_copy, monkeypatch):
    loads = []
    real = population._load
    monkeypatch.setattr(population, "_load", lambda *a: loads.append(a[1]) or real(*a))
    explain = Explanations(alpha_copy)
    trial_id, methods = next(iter(explain.methods().items()))
    method = next(m for m in methods if explain.population_images(trial_id, m))
    first = population.blocks(explain, alpha_copy.key, trial_id, method)
    read = len(loads)
    assert read >= 3
    second = population.blocks(explain, alpha_copy.key, trial_id, method)
    assert len(loads) == read  # unchanged arrays: not read again
    assert _graphs(first) == _graphs(second)


def test_explanations_page_arrives_drawn_in_one_request(studies_root):
    """The grid, notes and extras are in the page itself; their callbacks wait for a change."""
    study = Catalog(studies_root).get("alpha")
    trial_id = next(iter(Explanations(study).methods()))
    page = explanations.layout(None, study, {"trial": trial_id})
    tiles = [n for n in page["ex-grid"]._traverse() if getattr(n, "src", "")]
    assert tiles
    assert all(t.src.startswith("/render/overlay.png?") for t in tiles)
    assert page["ex-count"].children
    assert page["ex-population"].children is not None
    assert isinstance(page["ex-quality"].figure, dict)
    app = create_app(str(studies_root))
    dependencies = app.server.test_client().get("/_dash-dependencies").get_json()
    drawn = {spec for specs in explanations.ON_LOAD.values() for spec in specs}
    on_load = [d for d in dependencies if any(spec in d["output"] for spec in drawn)]
    assert len(on_load) == 4
    assert all(d["prevent_initial_call"] for d in on_load)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(
    not hasattr(os, "fork") or not Path("/proc").is_dir(), reason="Linux process table"
)
def test_workers_serve_one_port_and_stop_together(studies_root):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "cytotune.engine.cli", "dashboard", "--study"]
    command += [str(studies_root), "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = f"http://127.0.0.1:{port}/_dash-dependencies"
    try:
        deadline = time.time() + 120  # imports on a loaded 2-core box
        while time.time() < deadline:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert proc.poll() is None, "the dashboard exited"
                time.sleep(0.3)
        workers = _children(proc.pid)
        assert len(workers) == 2
        for _ in range(12):
            with urllib.request.urlopen(url, timeout=10) as answer:
                assert answer.status == 200
                assert json.loads(answer.read())
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        assert "(2 workers)" in proc.stdout.read()
        time.sleep(0.2)
        assert not [w for w in workers if Path(f"/proc/{w}").exists()]
    finally:
        if proc.poll() is None:
            proc.kill()
