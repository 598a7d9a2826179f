"""Leaderboard: every trial with family, key parameters and each metric as fold mean ± std.

Sorting, filtering and paging happen on the server (DataTable ``custom`` actions); the browser
holds one page of rows, so 10,000 trials stay responsive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from dash import Input, Output, State, dash_table, dcc, html

from .. import memo, query
from ..data import StudyUnreadable
from . import Page, common, sanity

PAGE = Page("leaderboard", nav="Leaderboard", order=10, memo=True)

PAGE_SIZE = 25
# Above this many trials the chart (plotly.js and a WebGL canvas) is drawn on request, so the
# table is on screen first.
CHART_INLINE = 2000
WIDTHS = {
    "rank": "64px",
    "trial": "92px",
    "family": "130px",
    "status": "92px",
    "epochs": "64px",
    "params": "340px",
    "images_per_s": "80px",
    **dict.fromkeys(
        (
            "explain_sanity",
            "explain_deletion_auc",
            "explain_insertion_auc",
            "explain_in_cell",
            "explain_score",
        ),
        "92px",
    ),
}
NO_BREAK_HYPHEN = "\u2011"
FIXED = {
    "rank": "rank",
    "trial": "trial_id",
    "family": "family",
    "status": "status",
    "epochs": "epochs_done",
    "params": "key_params",
}


def columns_for(study) -> dict[str, str]:
    """Table column id -> trials column."""
    out = dict(FIXED)
    out.update({m: f"val/{m}" for m in study.metrics()})
    out["images_per_s"] = "images_per_s"
    if not sanity.scores(study).empty:  # explained trials: their explanation scores
        out.update({c: c for c in sanity.SCORE_HEADERS})
    return out


def layout(ctx, study, params):
    trials = study.trials()
    metric, mode = study.objective()
    if trials.empty:
        return html.Div(
            [
                common.header(study),
                common.notice(
                    "No trial has reported yet; this page refreshes by itself while the search runs.",
                    "warn",
                ),
            ]
        )
    metrics = study.metrics()
    families = sorted(trials["family"].dropna().astype(str).unique())
    explained = not sanity.scores(study).empty
    table_columns = [
        {"id": "rank", "name": "rank", "type": "numeric"},
        {"id": "trial", "name": "trial", "presentation": "markdown"},
        {"id": "family", "name": "family"},
        {"id": "status", "name": "status"},
        {"id": "epochs", "name": "epochs", "type": "numeric"},
        {"id": "params", "name": "key parameters"},
        *[
            {
                "id": m,
                "name": m + (" ★" if m == metric else ""),
                "type": "numeric",
                "hideable": True,
            }
            for m in metrics
        ],
        {"id": "images_per_s", "name": "img/s", "type": "numeric", "hideable": True},
    ]
    if explained:  # next to the objective, so they are on screen without scrolling
        at = next((i + 1 for i, c in enumerate(table_columns) if c["id"] == metric), 6)
        table_columns[at:at] = [
            {"id": c, "name": name, "type": "numeric", "hideable": True}
            for c, name in sanity.SCORE_HEADERS.items()
        ]
    hidden = [m for m in metrics if m.startswith("well/")]
    # the first page goes out with the layout: one round trip less before the rows show
    first_rows, first_pages, first_count, _ = rows_for(study)
    return html.Div(
        [
            dcc.Store(id="lb-study", data=study.key),
            common.header(study),
            common.kpis(study),
            html.Div(
                [
                    html.Div(
                        [
                            html.Div(
                                [
                                    html.Label("family"),
                                    dcc.Dropdown(
                                        families,
                                        [],
                                        id="lb-family",
                                        multi=True,
                                        placeholder="all families",
                                    ),
                                ],
                                className="field",
                                style={"minWidth": "260px"},
                            ),
                            html.Div(
                                [
                                    html.Label("status"),
                                    dcc.Checklist(
                                        [{"label": " hide pruned", "value": "hide"}],
                                        [],
                                        id="lb-hide-pruned",
                                        inputStyle={"marginRight": "4px"},
                                    ),
                                ],
                                className="field",
                            ),
                            html.Div(
                                [
                                    html.Label("explanations"),
                                    dcc.Checklist(
                                        [
                                            {"label": " explained only", "value": "explained"},
                                            {
                                                "label": " every method passes the sanity check",
                                                "value": "sane",
                                            },
                                        ],
                                        [],
                                        id="lb-explained",
                                        inputStyle={"marginRight": "4px"},
                                    ),
                                ],
                                className="field",
                                style={"display": "flex" if explained else "none"},
                                title="; ".join(
                                    f"{sanity.SCORE_HEADERS[c]}: {t}"
                                    for c, t in sanity.SCORE_COLUMNS.items()
                                ),
                            ),
                            html.Div(
                                first_count,
                                id="lb-count",
                                className="muted",
                                style={"marginLeft": "auto"},
                            ),
                        ],
                        className="row",
                        style={"marginBottom": "10px"},
                    ),
                    html.Div(id="lb-error"),
                    dash_table.DataTable(
                        id="lb-table",
                        columns=table_columns,
                        hidden_columns=hidden,
                        data=first_rows,
                        page_count=first_pages,
                        page_current=0,
                        page_size=PAGE_SIZE,
                        page_action="custom",
                        sort_action="custom",
                        sort_mode="single",
                        sort_by=[],
                        filter_action="custom",
                        filter_query="",
                        filter_options={"placeholder_text": "filter"},
                        markdown_options={"link_target": "_self"},
                        style_table={"overflowX": "auto", "minWidth": "100%"},
                        style_cell={
                            "fontFamily": common.FONT,
                            "fontSize": "13px",
                            "padding": "5px 10px",
                            "whiteSpace": "nowrap",
                            "textAlign": "right",
                            "minWidth": "140px",
                            "width": "140px",
                            "maxWidth": "160px",
                        },
                        style_cell_conditional=[
                            {"if": {"column_id": c}, "textAlign": "left"}
                            for c in ("trial", "family", "status", "params")
                        ]
                        + [
                            {
                                "if": {"column_id": c},
                                "minWidth": w,
                                "width": w,
                                "maxWidth": w,
                                "overflow": "hidden",
                                "textOverflow": "ellipsis",
                            }
                            for c, w in WIDTHS.items()
                        ]
                        # key parameters wrap onto a second line rather than being cut off
                        + [
                            {
                                "if": {"column_id": "params"},
                                "whiteSpace": "normal",
                                "height": "auto",
                                "overflow": "visible",
                                "textOverflow": "clip",
                                "lineHeight": "1.35",
                            }
                        ],
                        style_header_conditional=[
                            {"if": {"column_id": c}, "whiteSpace": "normal"}
                            for c in sanity.SCORE_HEADERS
                        ],
                        style_header={
                            "backgroundColor": "#f1f5f9",
                            "fontWeight": "600",
                            "color": "#334155",
                        },
                        style_data_conditional=[
                            {"if": {"filter_query": "{status} = pruned"}, "color": "#94a3b8"},
                            {"if": {"filter_query": "{status} = failed"}, "color": "#b91c1c"},
                            {
                                "if": {"filter_query": "{status} = stopped", "column_id": "status"},
                                "color": "#b45309",
                            },
                            {
                                "if": {"filter_query": "{status} = running", "column_id": "status"},
                                "color": "#1d4ed8",
                                "fontWeight": "600",
                            },
                            {
                                "if": {
                                    "filter_query": "{status} = completed",
                                    "column_id": "status",
                                },
                                "color": "#15803d",
                            },
                            {"if": {"filter_query": "{rank} = 1"}, "backgroundColor": "#f0fdf4"},
                            {"if": {"column_id": metric}, "fontWeight": "600"},
                        ],
                        tooltip_delay=300,
                        tooltip_duration=None,
                    ),
                    html.Div(
                        "Sort by clicking a column header; filter by typing in the row under it "
                        "(e.g. > 0.9 for a metric, resnet for text). Well-level metrics: Toggle Columns.",
                        className="muted",
                        style={"fontSize": "12px", "marginTop": "6px"},
                    ),
                ],
                className="card",
            ),
            html.Div(
                [
                    html.H3(
                        [f"{metric} by trial", html.Small("fold mean; the line is the best so far")]
                    ),
                    html.Div(
                        _progress_graph(study)
                        if len(trials) <= CHART_INLINE
                        else html.Button(
                            f"draw all {len(trials):,} trials", id="lb-chart-button", n_clicks=0
                        ),
                        id="lb-chart",
                    ),
                ],
                className="card",
            ),
        ]
    )


def register(app, ctx):
    @app.callback(
        Output("lb-table", "data"),
        Output("lb-table", "page_count"),
        Output("lb-count", "children"),
        Output("lb-error", "children"),
        Input("lb-table", "page_current"),
        Input("lb-table", "page_size"),
        Input("lb-table", "sort_by"),
        Input("lb-table", "filter_query"),
        Input("lb-hide-pruned", "value"),
        Input("lb-family", "value"),
        Input("lb-explained", "value"),
        Input("version", "data"),
        State("lb-study", "data"),
        prevent_initial_call=True,
    )
    def fill(
        page_current, page_size, sort_by, filter_query, hide, families, explained, _version, key
    ):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable as exc:
            return [], 1, "", common.notice(str(exc), "error")
        args = (page_current, page_size, sort_by, filter_query, hide, families, explained)
        return memo.view(
            study, "leaderboard-rows", memo.freeze(args), lambda: rows_for(study, *args)
        )

    @app.callback(
        Output("lb-chart", "children"),
        Input("lb-chart-button", "n_clicks"),
        State("lb-study", "data"),
        prevent_initial_call=True,
    )
    def draw_chart(_clicks, key):
        try:
            return _progress_graph(ctx.catalog.get(key))
        except StudyUnreadable as exc:
            return common.notice(str(exc), "error")

    @app.callback(
        Output("lb-progress", "figure"),
        Input("version", "data"),
        State("lb-study", "data"),
        prevent_initial_call=True,
    )
    def redraw_chart(_version, key):
        try:
            study = ctx.catalog.get(key)
            return progress_figure(study.trials(), *study.objective())
        except StudyUnreadable:
            return {"data": [], "layout": common.FIG_LAYOUT}


def _progress_graph(study):
    figure = progress_figure(study.trials(), *study.objective())
    return dcc.Graph(
        id="lb-progress", figure=figure, config={"displaylogo": False}, style={"height": "320px"}
    )


def rows_for(
    study,
    page_current=0,
    page_size=PAGE_SIZE,
    sort_by=None,
    filter_query="",
    hide=None,
    families=None,
    explained=None,
):
    """(rows of one page, page count, "1–25 of N trials", error notice or None); ``explained``
    holds "explained" (only explained trials) and/or "sane" (every method passed the sanity
    check)."""
    try:
        trials = study.trials()
        metric, mode = study.objective()
    except StudyUnreadable as exc:
        return [], 1, "", common.notice(str(exc), "error")
    columns = columns_for(study)
    total = len(trials)
    error = None
    frame = sanity.with_scores(study, trials)
    if explained and "explain_sanity" in frame:
        if "explained" in explained:
            frame = frame[frame["explain_sanity"].notna()]
        if "sane" in explained:
            frame = frame[frame["explain_sanity"] >= 1]
    if hide:
        frame = frame[frame["status"] != "pruned"]
    if families:
        frame = frame[frame["family"].isin(families)]
    try:
        frame = query.apply_filter(frame, query.parse_filter(filter_query), columns)
    except ValueError as exc:
        error = common.notice(f"Filter ignored: {exc}", "warn")
    frame = query.apply_sort(frame, sort_by, columns, (f"val/{metric}", mode == "min"))
    size = page_size or PAGE_SIZE
    shown, pages = query.page(frame, page_current, size)
    rows = [_row(r, columns, study.key) for r in shown.to_dict("records")]
    if frame.empty:
        return rows, pages, f"no trials match the filter ({total:,} in the study)", error
    start = min(len(frame), min(int(page_current or 0), pages - 1) * size + 1)
    count = f"{start:,}–{start + len(rows) - 1:,} of {len(frame):,} trials" + (
        f" (filtered from {total:,})" if len(frame) != total else ""
    )
    return rows, pages, count, error


def _row(record: dict, columns: dict[str, str], key: str) -> dict:
    row = {}
    for cid, source in columns.items():
        value = record.get(source)
        if cid == "trial":
            row[cid] = f"[{value}]({common.href('trial/' + str(value), key)})"
        elif cid == "rank" or cid == "epochs":
            row[cid] = None if value is None or value != value else int(value)
        elif cid == "images_per_s":
            row[cid] = None if value is None or value != value else round(float(value))
        elif cid.startswith("explain_"):
            row[cid] = None if value is None or value != value else round(float(value), 3)
        elif source.startswith("val/"):
            row[cid] = query.mean_std(value, record.get(f"{source}_std"))
        elif cid == "params":  # wraps between parameters, never inside "lr=1.2e-03"
            row[cid] = "" if value is None else str(value).replace("-", NO_BREAK_HYPHEN)
        else:
            row[cid] = "" if value is None else str(value)
    return row


def progress_figure(trials, metric: str, mode: str) -> dict:
    """Objective of every trial in start order, coloured by family, with the best-so-far line.

    Trials are numbered from 1, as the search's live table and ``cytotune pull --list`` do
    (the store's ``number`` counts from 0).

    Built as a plain figure dict (no per-trace validation): 10,000 trials serialise in ~0.1 s.
    """
    key = f"val/{metric}"
    layout = {
        **common.FIG_LAYOUT,
        "xaxis": {"title": {"text": "trial number"}, "zeroline": False},
        "yaxis": {"title": {"text": metric}},
    }
    if trials.empty or key not in trials:
        return {"data": [], "layout": layout}
    frame = trials.sort_values("number") if "number" in trials else trials.reset_index(drop=True)
    x = (frame["number"] if "number" in frame else pd.Series(frame.index, index=frame.index)) + 1
    data = []
    for family, group in frame.groupby("family", sort=True):
        data.append(
            {
                "type": "scattergl",
                "mode": "markers",
                "name": str(family),
                "x": x[group.index].tolist(),
                "y": np.round(group[key].to_numpy(dtype=float), 5).tolist(),
                "text": group["trial_id"].astype(str).tolist(),
                "marker": {"size": 7 if len(frame) < 500 else 4, "opacity": 0.8},
                "hovertemplate": "%{text}<br>"
                + metric
                + " %{y:.4f}<br>trial number %{x}<extra>%{fullData.name}</extra>",
            }
        )
    values = frame[key].to_numpy(dtype=float)
    filled = np.where(np.isnan(values), -np.inf if mode == "max" else np.inf, values)
    best = np.maximum.accumulate(filled) if mode == "max" else np.minimum.accumulate(filled)
    best = [None if not np.isfinite(v) else round(float(v), 5) for v in best]
    data.append(
        {
            "type": "scatter",
            "mode": "lines",
            "name": "best so far",
            "x": x.tolist(),
            "y": best,
            "line": {"color": "#0f172a", "width": 2, "shape": "hv"},
        }
    )
    return {"data": data, "layout": layout}
