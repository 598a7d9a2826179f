"""Pieces every page uses: links, notices, the study header and key numbers, figure style."""

from __future__ import annotations

import urllib.parse

import pandas as pd
from dash import dcc, html

FONT = "-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"
FIG_LAYOUT = {
    "template": "plotly_white",
    "margin": {"l": 55, "r": 15, "t": 30, "b": 45},
    "legend": {"orientation": "h", "y": 1.08, "x": 0},
    "font": {"family": "-apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif", "size": 12},
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
