"""The Explanations page's grid: one page of crops with their attribution overlays, filtered and
paged; its inputs are declared once (:data:`INPUTS`) for the callback and the first draw."""

from __future__ import annotations

import math
import urllib.parse

from cytotune.explainers.job.tiles import MODES
from dash import Input, html

from ..explain import Explanations, filter_cells
from . import common

PAGE_SIZE = 24
# which cells are shown: a change goes back to the first page
CELLS = {
    "trial_id": Input("ex-trial", "value"),
    "method": Input("ex-method", "value"),
    "true": Input("ex-true", "value"),
    "pred": Input("ex-pred", "value"),
    "outcome": Input("ex-outcome", "value"),
    "span": Input("ex-range", "value"),
}
# how each tile is drawn: a change keeps the page
VIEW = {
    "channels": Input("ex-channels", "value"),
    "cmap": Input("ex-cmap", "value"),
    "alpha": Input("ex-alpha", "value"),
    "mode": Input("ex-mode", "value"),
    "pct": Input("ex-pct", "value"),
    "smooth": Input("ex-smooth", "value"),
}
STEPS = {Input("ex-prev", "n_clicks"): -1, Input("ex-next", "n_clicks"): 1}
# the grid callback's inputs, grouped as :func:`draw` takes them
INPUTS = {"cells": CELLS, "view": VIEW, "clicks": tuple(STEPS)}


def values_in(page, group: dict) -> dict:
    """``{name: value}`` of the inputs in ``group`` as a drawn ``page`` holds them."""
    return {
        name: getattr(page[dep.component_id], dep.component_property, None)
        for name, dep in group.items()
    }


def draw(study, cells: dict, view: dict, page, trigger):
    """``(tiles, page label, count, page)`` of the grid: the cells ``cells`` selects (keys of
    :data:`CELLS`) drawn as ``view`` says (keys of :data:`VIEW`); ``trigger`` is the id of the
    input that changed (a pager button steps, a view input keeps the page, any other resets)."""
    trial_id, method, span = cells["trial_id"], cells["method"], cells["span"]
    explain = Explanations(study)
    shown_cells = explain.cells(trial_id, method) if trial_id and method else None
    if shown_cells is None or shown_cells.empty:
        return common.notice("No maps for this trial and method.", "warn"), "", "", 0
    regression = study.task() == "regression"
    if regression and "abs_error" in shown_cells and shown_cells["abs_error"].notna().any():
        error, confidence = tuple(span), None
    else:
        error, confidence = None, tuple(span or (0, 1))
    shown = filter_cells(
        shown_cells, cells["true"], cells["pred"], cells["outcome"], confidence, error
    )
    pages = max(1, math.ceil(len(shown) / PAGE_SIZE))
    page = int(page or 0)
    steps = {dep.component_id: step for dep, step in STEPS.items()}
    if trigger in steps:
        page += steps[trigger]
    elif trigger not in {dep.component_id for dep in VIEW.values()}:
        page = 0
    page = min(max(page, 0), pages - 1)
    chunk = shown.iloc[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    explain.prefetch(chunk["cell_id"].astype(str).tolist())
    look = {k: view[k] for k in ("mode", "pct", "smooth")}
    tiles = [
        tile(
            study.key,
            trial_id,
            method,
            r,
            view["channels"],
            view["cmap"],
            view["alpha"],
            regression,
            look,
        )
        for r in chunk.to_dict("records")
    ]
    if not tiles:
        tiles = [common.notice("No cell matches these filters.", "warn")]
    count = f"{len(shown):,} of {len(shown_cells):,} explained cells"
    return tiles, f"page {page + 1} of {pages}", count, page


def overlay_url(key, trial_id, method, cell_id, channels, cmap, alpha, view=None) -> str:
    view = view or {}
    query = {
        "study": key,
        "trial": trial_id,
        "method": method,
        "cell": cell_id,
        "channels": ",".join(str(c) for c in sorted(channels or [])),
        "cmap": cmap or "auto",
        "alpha": f"{float(alpha if alpha is not None else 0.6):.2f}",
        "mode": view.get("mode") if view.get("mode") in MODES else "side",
        "pct": f"{float(view.get('pct') or 99.5):g}",
        "smooth": f"{float(view.get('smooth') or 0):g}",
    }
    return "/render/overlay.png?" + urllib.parse.urlencode(query)


def tile(key, trial_id, method, row, channels, cmap, alpha, regression, view=None):
    cell = str(row["cell_id"])
    if regression:
        caption = [
            html.Div(
                f"true {row.get('true_value', float('nan')):.3g} · predicted {row.get('predicted_value', float('nan')):.3g}"
            ),
            html.Div(f"error {row.get('abs_error', float('nan')):.3g}", className="muted"),
        ]
    else:
        correct = bool(row.get("correct"))
        confidence = row.get("confidence")
        caption = [
            html.Div(["true ", html.B(str(row.get("label", "")))]),
            html.Div(
                [
                    "pred ",
                    html.B(str(row.get("prediction", ""))),
                    "" if confidence is None or confidence != confidence else f" {confidence:.2f}",
                    html.Span(" ✓" if correct else " ✗", className="ok" if correct else "bad"),
                ]
            ),
        ]
    return html.Div(
        [
            html.Img(
                src=overlay_url(key, trial_id, method, cell, channels, cmap, alpha, view),
                title=cell,
                alt=cell,
                className="overlay",
            ),
            html.Div([*caption, html.Div(cell, className="id", title=cell)], className="cap"),
        ],
        className=("tile" if regression else ("tile right" if row.get("correct") else "tile wrong"))
        + ("" if (view or {}).get("mode") in ("blend", "contour") else " wide"),
        **{"data-cell": cell, "data-correct": str(bool(row.get("correct")))},
    )
