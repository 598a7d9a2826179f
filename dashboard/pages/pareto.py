"""The compare page's Pareto view: the objective against an explanation score, for the explained
trials, with the non-dominated trials joined and labelled (what to pull when both matter)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cytotune.explainers.job.verdicts import SCORE_COLUMNS
from dash import Input, Output, State, dcc, html

from ..data import StudyUnreadable, metric_direction
from . import common, sanity

LOWER_IS_BETTER = {"explain_deletion_auc"}


def pareto_front(x: np.ndarray, y: np.ndarray, x_max: bool = True, y_max: bool = True):
    """Indices of the non-dominated points (both coordinates better or equal, one strictly),
    ordered along x."""
    sx = np.where(x_max, x, -x)
    sy = np.where(y_max, y, -y)
    keep = []
    for i in range(len(x)):
        dominated = np.any((sx >= sx[i]) & (sy >= sy[i]) & ((sx > sx[i]) | (sy > sy[i])))
        if not dominated and np.isfinite(sx[i]) and np.isfinite(sy[i]):
            keep.append(i)
    return sorted(keep, key=lambda i: x[i])


def figure(trials: pd.DataFrame, metric: str, score: str) -> dict:
    key = f"val/{metric}"
    layout = {
        **common.FIG_LAYOUT,
        "xaxis": {"title": {"text": f"{metric} (fold mean)"}},
        "yaxis": {"title": {"text": sanity.SCORE_HEADERS.get(score, score)}},
        "legend": {"orientation": "h", "y": -0.2},
    }
    if score not in trials or key not in trials:
        return {"data": [], "layout": layout}
    frame = trials[trials[score].notna() & trials[key].notna()]
    if frame.empty:
        return {"data": [], "layout": layout}
    x, y = frame[key].to_numpy(float), frame[score].to_numpy(float)
    sane = frame["explain_sanity"].to_numpy(float) >= 1
    data = []
    for mask, name, color in (
        (sane, "every method passed", "#16a34a"),
        (~sane, "a method did not pass", "#dc2626"),
    ):
        if mask.any():
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": name,
                    "x": x[mask].round(5).tolist(),
                    "y": y[mask].round(4).tolist(),
                    "text": frame["trial_id"].astype(str)[mask].tolist(),
                    "marker": {"size": 10, "color": color, "opacity": 0.85},
                    "hovertemplate": "%{text}<br>%{x:.4f}, %{y:.3f}<extra>%{fullData.name}</extra>",
                }
            )
    front = pareto_front(x, y, metric_direction(metric) == "max", score not in LOWER_IS_BETTER)
    data.append(
        {
            "type": "scatter",
            "mode": "lines+markers+text",
            "name": "Pareto front",
            "x": x[front].round(5).tolist(),
            "y": y[front].round(4).tolist(),
            "text": frame["trial_id"].astype(str).to_numpy()[front].tolist(),
            "textposition": "top center",
            "line": {"color": "#0f172a", "width": 1.5, "dash": "dot"},
            "marker": {"size": 14, "symbol": "circle-open", "color": "#0f172a"},
            "hoverinfo": "skip",
        }
    )
    return {"data": data, "layout": layout}


def card(study):
    if sanity.scores(study).empty:
        return common.card(
            "Objective vs explanations",
            common.notice(
                "No explained trials: run `cytotune explain` to compare the objective with "
                "explanation quality.",
                "info",
            ),
        )
    return common.card(
        "Objective vs explanations (Pareto view)",
        html.Div(
            [
                html.Label("explanation score"),
                dcc.Dropdown(
                    [{"label": sanity.SCORE_HEADERS[c], "value": c} for c in SCORE_COLUMNS],
                    "explain_score",
                    id="cmp-pareto-score",
                    clearable=False,
                ),
            ],
            className="field",
            style={"maxWidth": "260px"},
        ),
        dcc.Graph(id="cmp-pareto", config={"displaylogo": False}, style={"height": "380px"}),
        html.Div(id="cmp-pareto-note", className="muted", style={"fontSize": "12px"}),
        sub="explained trials; open circles: no other trial is better on both axes",
    )


def register(app, ctx):
    @app.callback(
        Output("cmp-pareto", "figure"),
        Output("cmp-pareto-note", "children"),
        Input("cmp-metric", "value"),
        Input("cmp-pareto-score", "value"),
        State("cmp-study", "data"),
    )
    def update(metric, score, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable as exc:
            return {"data": [], "layout": common.FIG_LAYOUT}, str(exc)
        trials = sanity.with_scores(study, study.trials())
        return figure(trials, metric, score), SCORE_COLUMNS.get(score, "")
