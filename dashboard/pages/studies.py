"""Studies: every study under the dashboard's root with task, dataset, trials, best value, status;
below, the detection montages of the datasets that ``cytotune crop`` built (``montages.py``)."""

from __future__ import annotations

from dash import dash_table, html

from . import Page, common, montages

PAGE = Page("studies", nav="Studies", order=40, needs_study=False)

# Dataset paths longer than this lose their start ("…/studies/dataset"): the end names the
# dataset; the full path shows on hover.
DATASET_CHARS = 44


def left_ellipsis(text: str, width: int = DATASET_CHARS) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def layout(ctx, _study, params):
    catalog = ctx.catalog
    catalog.refresh()
    rows = [catalog.get(key).summary() for key in catalog.keys]
    if not rows:
        return common.notice(
            f"No cytotune study under {catalog.root}. A study directory holds study.json and trials.parquet; "
            "create one with `cytotune search --config study.yaml` or `cytotune demo`.",
            "warn",
        )
    data = []
    for row in rows:
        data.append(
            {
                "study": f"[{row['study']}]({common.href('leaderboard', row['study'])})",
                "task": row.get("task", ""),
                "dataset": left_ellipsis(str(row.get("dataset", ""))),
                "trials": row.get("trials", 0),
                "completed": row.get("completed", ""),
                "pruned": row.get("pruned", ""),
                "objective": row.get("objective", ""),
                "best": "-" if row.get("best") is None else f"{row['best']:.4f}",
                "status": row.get("status", ""),
                "problem": row.get("error", ""),
            }
        )
    columns = [
        {"id": c, "name": c, **({"presentation": "markdown"} if c == "study" else {})}
        for c in (
            "study",
            "task",
            "dataset",
            "trials",
            "completed",
            "pruned",
            "objective",
            "best",
            "status",
            "problem",
        )
    ]
    return html.Div(
        [
            html.H2(
                f"Studies under {catalog.root}", style={"fontSize": "20px", "margin": "0 0 14px"}
            ),
            common.card(
                f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'}",
                dash_table.DataTable(
                    id="studies-table",
                    columns=columns,
                    data=data,
                    sort_action="native",
                    markdown_options={"link_target": "_self"},
                    tooltip_data=[
                        {"dataset": {"value": str(row.get("dataset", "")), "type": "text"}}
                        for row in rows
                    ],
                    tooltip_delay=200,
                    tooltip_duration=None,
                    style_cell_conditional=[
                        {"if": {"column_id": "dataset"}, "whiteSpace": "nowrap"},
                    ],
                    style_cell={
                        "fontFamily": common.FONT,
                        "fontSize": "13px",
                        "padding": "6px 10px",
                        "textAlign": "left",
                        "whiteSpace": "normal",
                    },
                    style_header={"backgroundColor": "#f1f5f9", "fontWeight": "600"},
                    style_data_conditional=[
                        {
                            "if": {"filter_query": "{status} = unreadable"},
                            "backgroundColor": "#fef2f2",
                        },
                        {
                            "if": {"filter_query": "{status} = running"},
                            "backgroundColor": "#eff6ff",
                        },
                    ],
                ),
            ),
            *montages.gallery(catalog.get(key) for key in catalog.keys),
        ]
    )


def register(app, ctx):
    montages.add_route(app, ctx)
