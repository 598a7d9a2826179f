"""Population figures drawn from the job's arrays (``population/.../*.npy``), large and labelled:
the geometric-mean crop, the geometric-mean map with its colour bar, and the local correlation
between map and each channel with the shares of pixels above +0.5 and below -0.5 in the titles.
Falls back to the job's PNGs when the arrays are missing."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from cytotune.explainers.job import layout as paths
from cytotune.explainers.job.tiles import units
from cytotune.explainers.methods.channels import overlay
from dash import html
from plotly.subplots import make_subplots

from . import common


def _load(folder, name):
    path = folder / f"{name}.npy"
    try:
        return np.load(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _axes(fig, rows=1, cols=1):
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            fig.update_xaxes(title_text="x (px)", row=r, col=c, constrain="domain")
            fig.update_yaxes(
                title_text="y (px)" if c == 1 else None,
                row=r,
                col=c,
                autorange="reversed",
                scaleanchor=f"x{'' if (r - 1) * cols + c == 1 else (r - 1) * cols + c}",
            )


def crop_and_map(image, gmap, names, method, n) -> go.Figure:
    """Geometric-mean crop | geometric-mean map, with the map's colour bar and units."""
    fig = make_subplots(
        1,
        2,
        subplot_titles=(f"geometric-mean crop (n = {n})", "geometric-mean map"),
        horizontal_spacing=0.12,
    )
    rgb = overlay(image, None, channel_names=names if len(names) == len(image) else None)
    fig.add_trace(go.Image(z=rgb, hoverinfo="skip"), 1, 1)
    fig.add_trace(
        go.Heatmap(
            z=np.asarray(gmap, float),
            colorscale="Viridis",
            colorbar={
                "title": {"text": units(method), "side": "right"},
                "len": 0.9,
                "thickness": 12,
            },
            hovertemplate="x %{x}, y %{y}: %{z:.3g}<extra></extra>",
        ),
        1,
        2,
    )
    _axes(fig, 1, 2)
    fig.update_layout(
        {**common.FIG_LAYOUT, "height": 330, "margin": {"l": 50, "r": 20, "t": 40, "b": 45}}
    )
    return fig


def correlation(corr, labels, shares) -> go.Figure:
    """One panel per channel (and their mean): local Pearson r between map and channel, -1..1."""
    cols = len(corr)
    titles = []
    for label in labels:
        pos, neg = shares.get(label, (None, None))
        share = "" if pos is None else f"<br>r>0.5: {pos:.0%} · r<−0.5: {neg:.0%}"
        titles.append(f"{label}{share}")
    fig = make_subplots(1, cols, subplot_titles=titles, horizontal_spacing=0.06)
    for i, plane in enumerate(corr):
        fig.add_trace(
            go.Heatmap(
                z=np.asarray(plane, float),
                zmin=-1,
                zmax=1,
                colorscale="RdBu_r",
                showscale=i == cols - 1,
                colorbar={"title": {"text": "Pearson r", "side": "right"}, "thickness": 12},
                hovertemplate="x %{x}, y %{y}: r %{z:.2f}<extra></extra>",
            ),
            1,
            i + 1,
        )
    _axes(fig, 1, cols)
    fig.update_annotations(font_size=12)
    fig.update_layout(
        {**common.FIG_LAYOUT, "height": 330, "margin": {"l": 50, "r": 20, "t": 60, "b": 45}}
    )
    return fig


def blocks(explain, key, trial_id, method):
    rows = explain.population_images(trial_id, method) if trial_id and method else []
    if not rows:
        return common.notice("No population maps for this trial and method.", "warn")
    names = explain.channel_names()
    out = []
    for r in rows:
        folder = paths.population_dir(explain.study.path, trial_id, method, r["class"])
        image, gmap, corr = (_load(folder, k) for k in ("gmean_image", "gmean_map", "correlation"))
        shares = {
            (ch.get("channel") or "all"): (ch.get("positive_ratio"), ch.get("negative_ratio") or 0)
            for ch in r["channels"]
            if ch.get("positive_ratio") == ch.get("positive_ratio")
            and ch.get("positive_ratio") is not None
        }
        head = html.Div(
            [html.B(r["class"]), html.Span(f" · n = {r.get('n')} cells", className="muted")],
            style={"margin": "6px 0"},
        )
        if image is None or gmap is None or image.ndim != 3 or gmap.ndim != 2:
            out.append(html.Div([head, _png_fallback(key, r)]))
            continue
        figures = [common.graph(crop_and_map(image, gmap, names, method, r.get("n")), 330)]
        if corr is not None and corr.ndim == 3 and corr.shape[1:] == gmap.shape:
            labels = (
                (names + ["all"])[: len(corr)]
                if len(names) + 1 == len(corr)
                else [f"channel {i}" for i in range(len(corr) - 1)] + ["all"]
            )
            figures.append(common.graph(correlation(corr, labels, shares), 330))
        out.append(html.Div([head, *figures], className="population-class"))
    return html.Div(out)


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
