"""Pieces every page uses: links, notices, the study header and key numbers, figure style."""

from __future__ import annotations

import base64
import io
import urllib.parse

import numpy as np
import pandas as pd
import plotly.io as pio
from dash import dcc, html

FONT = "-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"
FIG_LAYOUT = {
    "template": "plotly_white",
    "margin": {"l": 55, "r": 15, "t": 30, "b": 45},
    "legend": {"orientation": "h", "y": 1.08, "x": 0},
    "font": {"family": "-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif", "size": 12},
}
# The same style for figures built as plain dicts (trial and population pages): plotly_white's
# layout part, read once. A go.Figure validates every property and deep-copies its template
# (30-140 ms a figure, most of a page view under load), so those pages do not build one; and
# plotly.js, unlike plotly.py, does not know templates by name. (Handing go.Figure this dict
# instead of the name costs it about 9x more: pages that build go.Figure keep the name.)
DICT_LAYOUT = {
    **FIG_LAYOUT,
    "template": {"layout": pio.templates["plotly_white"].layout.to_plotly_json()},
}


def href(page: str, study: str | None, **extra) -> str:
    """``/page?study=KEY&...`` (empty values left out)."""
    query = {k: v for k, v in {"study": study, **extra}.items() if v not in (None, "")}
    return f"/{page}" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def file_url(study: str, relative: str) -> str:
    """URL of a file inside a study directory (served by the /files route, which checks it)."""
    return "/files?" + urllib.parse.urlencode({"study": study, "path": relative})


def notice(text, kind: str = "info") -> html.Div:
    return html.Div(text, className=f"notice {kind}")


def badge(status: str) -> html.Span:
    return html.Span(status, className=f"badge {status}")


def header(study, title: str | None = None) -> html.Div:
    metric, mode = study.objective()
    status = study.status_or_empty()
    return html.Div(
        [
            html.H2(title or study.key, style={"margin": "0 8px 0 0", "fontSize": "20px"}),
            badge(str(status.get("status", "no study.json"))),
            html.Span(
                f"objective {metric} ({mode}) · task {study.task()} · dataset {study.dataset_path() or '?'}",
                className="muted",
                style={"marginLeft": "12px"},
            ),
        ],
        style={
            "display": "flex",
            "alignItems": "center",
            "marginBottom": "14px",
            "flexWrap": "wrap",
        },
    )


def kpi(value, label, id=None) -> html.Div:
    return html.Div(
        [html.Div(value, className="v", id=id or ""), html.Div(label, className="k")],
        className="kpi",
    )


def kpis(study) -> html.Div:
    trials = study.trials()
    metric, mode = study.objective()
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    key = f"val/{metric}"
    best = "-"
    best_trial = None
    if not trials.empty and key in trials and trials[key].notna().any():
        idx = trials[key].idxmax() if mode == "max" else trials[key].idxmin()
        row = trials.loc[idx]
        std = row.get(f"{key}_std")
        best = f"{row[key]:.4f}" + ("" if pd.isna(std) else f" ± {std:.4f}")
        best_trial = str(row["trial_id"])
    return html.Div(
        [
            kpi(f"{len(trials):,}", "trials", id="kpi-trials"),
            kpi(f"{counts.get('completed', 0):,}", "completed"),
            kpi(f"{counts.get('running', 0):,}", "running"),
            kpi(f"{counts.get('pruned', 0):,}", "pruned"),
            kpi(f"{counts.get('failed', 0) + counts.get('error', 0):,}", "failed"),
            kpi(best, f"best {metric}"),
            kpi(
                dcc.Link(best_trial, href=href(f"trial/{best_trial}", study.key))
                if best_trial
                else "-",
                "best trial",
            ),
        ],
        className="kpis",
    )


def card(title, *children, sub: str | None = None, **kw) -> html.Div:
    head = html.H3([title, html.Small(sub)] if sub else title)
    return html.Div([head, *children], className="card", **kw)


def graph(figure, height: int = 340, **kw) -> dcc.Graph:
    return dcc.Graph(
        figure=figure, config={"displaylogo": False}, style={"height": f"{height}px"}, **kw
    )


def subplots(titles, spacing: float, title_size: int = 16) -> tuple[list[list[float]], dict]:
    """One row of ``len(titles)`` subplots as plotly.subplots.make_subplots lays them out: the
    x domains and the layout entries (axes ``x``, ``x2``, ... anchored to ``y``, ``y2``, ... and
    the titles as annotations), without building a go.Figure."""
    cols = len(titles)
    width = (1.0 - spacing * (cols - 1)) / cols
    domains = [[i * (width + spacing), i * (width + spacing) + width] for i in range(cols)]
    layout: dict = {}
    for i, domain in enumerate(domains):
        suffix = "" if i == 0 else str(i + 1)
        layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": domain}
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "domain": [0.0, 1.0]}
    layout["annotations"] = [
        {
            "text": title,
            "x": (domain[0] + domain[1]) / 2,
            "y": 1.0,
            "xref": "paper",
            "yref": "paper",
            "xanchor": "center",
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": title_size},
        }
        for title, domain in zip(titles, domains)
    ]
    return domains, layout


def axis_ref(i: int) -> tuple[str, str]:
    """The trace's (xaxis, yaxis) for subplot ``i`` (0-based) of one row."""
    return ("x", "y") if i == 0 else (f"x{i + 1}", f"y{i + 1}")


def typed_array(values, dtype: str = "f4") -> dict:
    """A numeric array as plotly.js's typed-array spec (base64 bytes, dtype, shape): about a
    third of the JSON text of a list of floats, and encoded without a Python loop."""
    array = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    spec = {"dtype": dtype, "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ", ".join(map(str, array.shape))
    return spec


def png_source(rgb) -> str:
    """An (H, W, 3) uint8 image as a PNG data URI (the ``source`` of an image trace)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
