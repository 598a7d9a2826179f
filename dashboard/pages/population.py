"""Population figures drawn from the job's arrays (``population/.../*.npy``), large and labelled:
the geometric-mean crop, the geometric-mean map with its colour bar, and the local correlation
between map and each channel with the shares of pixels above +0.5 and below -0.5 in the titles.
Falls back to the job's PNGs when the arrays are missing."""

from __future__ import annotations

import numpy as np
from cytotune.explainers.job import layout as paths
from cytotune.explainers.job.tiles import units
from cytotune.explainers.methods.channels import overlay
from dash import html
from plotly.colors import get_colorscale

from .. import memo
from . import common


def _load(folder, name):
    path = folder / f"{name}.npy"
    try:
        return np.load(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _axes(layout: dict, cols: int) -> dict:
    """Pixel axes: titled, y downwards, square pixels (each y axis scaled to its x axis)."""
    for i in range(cols):
        x, y = common.axis_ref(i)
        layout[f"xaxis{x[1:]}"].update(title={"text": "x (px)"}, constrain="domain")
        layout[f"yaxis{y[1:]}"].update(autorange="reversed", scaleanchor=x)
        if i == 0:
            layout["yaxis"]["title"] = {"text": "y (px)"}
    return layout


def crop_and_map(image, gmap, names, method, n) -> dict:
    """Geometric-mean crop | geometric-mean map, with the map's colour bar and units."""
    _, grid = common.subplots(
        (f"geometric-mean crop (n = {n})", "geometric-mean map"), spacing=0.12
    )
    rgb = overlay(image, None, channel_names=names if len(names) == len(image) else None)
    data = [
        {"type": "image", "source": common.png_source(rgb), "hoverinfo": "skip"},
        {
            "type": "heatmap",
            "z": common.typed_array(gmap),
            "colorscale": get_colorscale("Viridis"),  # plotly.js reads some names reversed
            "colorbar": {
                "title": {"text": units(method), "side": "right"},
                "len": 0.9,
                "thickness": 12,
            },
            "hovertemplate": "x %{x}, y %{y}: %{z:.3g}<extra></extra>",
            "xaxis": "x2",
            "yaxis": "y2",
        },
    ]
    layout = {
        **common.DICT_LAYOUT,
        **_axes(grid, 2),
        "height": 330,
        "margin": {"l": 50, "r": 20, "t": 40, "b": 45},
    }
    return {"data": data, "layout": layout}


def correlation(corr, labels, shares) -> dict:
    """One panel per channel (and their mean): local Pearson r between map and channel, -1..1."""
    cols = len(corr)
    titles = []
    for label in labels:
        pos, neg = shares.get(label, (None, None))
        share = "" if pos is None else f"<br>r>0.5: {pos:.0%} · r<−0.5: {neg:.0%}"
        titles.append(f"{label}{share}")
    _, grid = common.subplots(titles, spacing=0.06, title_size=12)
    data = []
    for i, plane in enumerate(corr):
        x, y = common.axis_ref(i)
        data.append(
            {
                "type": "heatmap",
                "z": common.typed_array(plane),
                "zmin": -1,
                "zmax": 1,
                "colorscale": get_colorscale("RdBu_r"),
                "showscale": i == cols - 1,
                "colorbar": {"title": {"text": "Pearson r", "side": "right"}, "thickness": 12},
                "hovertemplate": "x %{x}, y %{y}: r %{z:.2f}<extra></extra>",
                "xaxis": x,
                "yaxis": y,
            }
        )
    layout = {
        **common.DICT_LAYOUT,
        **_axes(grid, cols),
        "height": 330,
        "margin": {"l": 50, "r": 20, "t": 60, "b": 45},
    }
    return {"data": data, "layout": layout}


def blocks(explain, key, trial_id, method):
    rows = explain.population_images(trial_id, method) if trial_id and method else []
    if not rows:
        return common.notice("No population maps for this trial and method.", "warn")
    names = explain.channel_names()
    out = []
    for r in rows:
        head = html.Div(
            [html.B(r["class"]), html.Span(f" · n = {r.get('n')} cells", className="muted")],
            style={"margin": "6px 0"},
        )
        figures = _class_figures(explain, trial_id, method, r, names)
        if figures is None:
            out.append(html.Div([head, _png_fallback(key, r)]))
            continue
        graphs = [common.graph(figure, 330) for figure in figures]
        out.append(html.Div([head, *graphs], className="population-class"))
    return html.Div(out)


def _class_figures(explain, trial_id, method, r, names) -> list[dict] | None:
    """The figures of one class (None: arrays missing), drawn once per version of its arrays
    and of population.parquet, not per page view."""
    folder = paths.population_dir(explain.study.path, trial_id, method, r["class"])
    files = tuple(folder / f"{k}.npy" for k in ("gmean_image", "gmean_map", "correlation"))

    def draw():
        image, gmap, corr = (_load(folder, k) for k in ("gmean_image", "gmean_map", "correlation"))
        if image is None or gmap is None or image.ndim != 3 or gmap.ndim != 2:
            return None
        shares = {
            (ch.get("channel") or "all"): (ch.get("positive_ratio"), ch.get("negative_ratio") or 0)
            for ch in r["channels"]
            if ch.get("positive_ratio") == ch.get("positive_ratio")
            and ch.get("positive_ratio") is not None
        }
        figures = [crop_and_map(image, gmap, names, method, r.get("n"))]
        if corr is not None and corr.ndim == 3 and corr.shape[1:] == gmap.shape:
            labels = (
                (names + ["all"])[: len(corr)]
                if len(names) + 1 == len(corr)
                else [f"channel {i}" for i in range(len(corr) - 1)] + ["all"]
            )
            figures.append(correlation(corr, labels, shares))
        return figures

    key = (str(folder), method, tuple(names), repr(r["channels"]), repr(r.get("n")))
    return memo.files_view(files, "population-figures", key, draw)


def _png_fallback(key, r):
    images = []
    for name, label in (
        ("gmean_image", "mean crop"),
        ("gmean_map", "geometric-mean map"),
        ("correlation", "correlation map"),
    ):
        rel = r.get(name)
        images.append(
            html.Div(
                [
                    html.Img(src=common.file_url(key, rel)) if rel else html.Div("missing"),
                    html.Div(label),
                ]
            )
        )
    return html.Div(images, className="pop")
