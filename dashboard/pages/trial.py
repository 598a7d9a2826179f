"""Trial: per-fold metrics, ROC curves, confusion matrix, learning curves, configuration, pull."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from cytotune.engine.search.tables import decode_cell
from dash import dash_table, dcc, html
from plotly.colors import get_colorscale

from ..data import trial_params
from ..explain import Explanations
from . import Page, common, sanity

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")
FOLD_METRICS = (
    "balanced_accuracy",
    "accuracy",
    "f1_macro",
    "f1_weighted",
    "auc_macro",
    "log_loss",
    "r2",
    "mae",
)

PAGE = Page("trial", memo=True)  # reached from the leaderboard


def pull_command(study, trial_id: str) -> str:
    return f"cytotune pull --study {shlex.quote(str(study.path))} --trial {shlex.quote(trial_id)} --out {shlex.quote('bundles/' + trial_id)}"


def layout(ctx, study, params):
    trial_id = params.get("arg") or ""
    trials = study.trials()
    match = trials[trials["trial_id"].astype(str) == trial_id] if not trials.empty else trials
    if match.empty:
        return html.Div(
            [common.header(study), common.notice(f"No trial {trial_id!r} in this study.", "error")]
        )
    row = match.iloc[0]
    metric, mode = study.objective()
    folds = study.trial_rows("folds", trial_id)
    folds = folds.sort_values("fold") if not folds.empty else folds
    epochs = study.trial_rows("epochs", trial_id)
    key = f"val/{metric}"
    value = row.get(key)
    value_text = (
        "-"
        if value is None or pd.isna(value)
        else f"{value:.4f} ± {row.get(key + '_std', 0) or 0:.4f}"
    )
    rank = row.get("rank")
    command = pull_command(study, trial_id)
    classes = _classes(study, folds)
    return html.Div(
        [
            dcc.Store(id="trial-study", data=study.key),
            html.Div(
                [
                    html.H2(
                        f"Trial {trial_id}",
                        style={"margin": "0 10px 0 0", "fontSize": "20px"},
                        id="trial-title",
                    ),
                    common.badge(str(row.get("status"))),
                    html.Span(
                        f"{row.get('family')} · {row.get('key_params', '')} · {metric} {value_text}"
                        + (
                            ""
                            if rank is None or pd.isna(rank)
                            else f" · rank {int(rank)} of {len(trials)}"
                        ),
                        className="muted",
                        style={"marginLeft": "12px"},
                    ),
                    *(
                        [
                            dcc.Link(
                                "explanations",
                                href=common.href("explanations", study.key, trial=trial_id),
                                style={"marginLeft": "auto", "marginRight": "16px"},
                                id="trial-explanations",
                            )
                        ]
                        if trial_id in Explanations(study).methods()
                        else []
                    ),
                    dcc.Link(
                        "← leaderboard",
                        href=common.href("leaderboard", study.key),
                        style={"marginLeft": "auto"},
                    ),
                ],
                style={
                    "display": "flex",
                    "alignItems": "center",
                    "marginBottom": "14px",
                    "flexWrap": "wrap",
                },
            ),
            html.Div(sanity.summary_line(study, trial_id), id="trial-sanity"),
            common.card(
                "Pull this model",
                html.Div(
                    [
                        html.Code(command, id="pull-command"),
                        dcc.Clipboard(target_id="pull-command", title="copy"),
                    ],
                    className="cmd",
                ),
                html.Div(
                    [
                        "checkpoint: ",
                        html.Code(str(row.get("checkpoint") or "none yet"), id="trial-checkpoint"),
                    ],
                    className="muted",
                    style={"marginTop": "8px", "fontSize": "12px"},
                ),
                _node_line(row),
            ),
            html.Div(
                [
                    common.card(
                        "Per-fold metrics",
                        common.graph(fold_figure(folds), 300),
                        _fold_table(folds),
                        sub=f"{len(folds)} folds",
                    ),
                    common.card(
                        "Learning curves",
                        common.graph(learning_figure(epochs, metric), 360),
                        sub="per fold; dashed = validation",
                    ),
                ],
                className="grid2",
            ),
            html.Div(
                [
                    common.card(
                        "ROC curves",
                        _or_notice(
                            roc_figure(folds, classes),
                            "No ROC curves (regression, or no fold results yet).",
                        ),
                        sub="one-vs-rest, per fold",
                    ),
                    common.card(
                        "Confusion matrix",
                        _or_notice(
                            confusion_figure(folds, classes),
                            "No confusion matrix (regression, or no fold results yet).",
                            height=max(360, 120 + 30 * len(classes)),  # legible with 16 classes
                        ),
                        sub="summed over folds; colour = share of the true class",
                    ),
                ],
                className="grid2",
            ),
            common.card(
                "Configuration",
                html.Pre(config_text(trial_params(row)), className="config", id="trial-config"),
                _checkpoint_files(row),
            ),
        ]
    )


def _node_line(row: pd.Series):
    """The Ray node the trial ran on (every node, in order, when it was moved after a failure)."""
    node = row.get("node_id")
    if node is None or pd.isna(node) or not str(node):
        return html.Div()
    nodes = [n for n in str(row.get("nodes") or node).split(",") if n]
    text = " → ".join(nodes) if len(nodes) > 1 else str(node)
    return html.Div(
        [
            "Ray node: ",
            html.Code(text, id="trial-node", title="ray.get_runtime_context().get_node_id()"),
        ],
        className="muted",
        style={"marginTop": "4px", "fontSize": "12px", "overflowWrap": "anywhere"},
    )


def _or_notice(figure: dict, text: str, height: int = 360):
    """The figure, or a notice when it has nothing to draw (the diagonal alone does not count)."""
    drawn = [t for t in figure["data"] if t.get("showlegend") is not False]
    return common.graph(figure, height) if drawn else common.notice(text, "info")


def register(app, ctx):
    return None


def _classes(study, folds) -> list[str]:
    label_map = study.manifest().get("label_map") or {}
    if label_map:
        return [name for name, _ in sorted(label_map.items(), key=lambda kv: kv[1])]
    if not folds.empty and "roc" in folds:
        for cell in folds["roc"].dropna():
            try:
                return list(decode_cell("folds", "roc", cell))
            except ValueError:
                continue
    return []


def _fold_table(folds: pd.DataFrame):
    if folds.empty:
        return common.notice(
            "No per-fold results yet (they are written when the trial ends).", "warn"
        )
    shown = [m for m in FOLD_METRICS if m in folds] + [c for c in ("n_val", "epoch") if c in folds]
    data = [
        {
            "fold": int(r["fold"]),
            **{m: (round(float(r[m]), 4) if pd.notna(r[m]) else None) for m in shown},
        }
        for r in folds.to_dict("records")
    ]
    return dash_table.DataTable(
        id="fold-table",
        columns=[{"id": c, "name": c} for c in ("fold", *shown)],
        data=data,
        style_cell={"fontFamily": common.FONT, "fontSize": "12px", "padding": "4px 8px"},
        style_header={"backgroundColor": "#f1f5f9", "fontWeight": "600"},
    )


def _layout(**extra) -> dict:
    """common.DICT_LAYOUT with ``extra`` merged one level deep (as update_layout does)."""
    layout = dict(common.DICT_LAYOUT)
    for key, value in extra.items():
        merge = isinstance(value, dict) and isinstance(layout.get(key), dict)
        layout[key] = {**layout[key], **value} if merge else value
    return layout


def _floats(values) -> list:
    """Plain floats for JSON (NaN as None, which plotly.js leaves as a gap)."""
    return [None if v is None or v != v else float(v) for v in values]


def fold_figure(folds: pd.DataFrame) -> dict:
    """Each metric's value on every fold (dots) and their mean (a bar across), on a zoomed axis."""
    shown = [m for m in FOLD_METRICS if m in folds and m != "log_loss" and folds[m].notna().any()]
    if folds.empty or not shown:
        return {"data": [], "layout": _layout()}
    values = folds[shown].to_numpy(dtype=float)  # (folds, metrics)
    data = [
        {
            "type": "scatter",
            "x": shown,
            "y": _floats(np.nanmean(values, axis=0)),
            "mode": "markers",
            "name": "fold mean",
            "marker": {
                "symbol": "line-ew-open",
                "size": 34,
                "color": "#0f172a",
                "line": {"width": 2},
            },
            "hovertemplate": "%{x} mean %{y:.4f}<extra></extra>",
        }
    ]
    for i, (fold, row) in enumerate(zip(folds["fold"].astype(int), values)):
        data.append(
            {
                "type": "scatter",
                "x": shown,
                "y": _floats(row),
                "mode": "markers",
                "name": f"fold {fold}",
                "marker": {
                    "color": PALETTE[i % len(PALETTE)],
                    "size": 10,
                    "line": {"color": "white", "width": 1},
                },
                "hovertemplate": "%{x} %{y:.4f}<extra>fold " + str(fold) + "</extra>",
            }
        )
    low = float(np.nanmin(values))
    return {
        "data": data,
        "layout": _layout(yaxis={"range": [max(0.0, low - 0.05), 1.005]} if low >= 0 else {}),
    }


def learning_figure(epochs: pd.DataFrame, metric: str) -> dict:
    """Loss (train solid, validation dashed) and ``metric`` per epoch, one colour per fold."""
    _, grid = common.subplots(("loss", metric), spacing=0.12)
    layout = _layout(**grid, legend={"orientation": "h", "y": -0.18}, margin={"t": 60})
    data: list[dict] = []
    if epochs.empty:
        return {"data": data, "layout": layout}
    per_fold = epochs[epochs["fold"] >= 0].sort_values("epoch")
    for i, (fold, group) in enumerate(per_fold.groupby("fold")):
        color = PALETTE[i % len(PALETTE)]
        x = group["epoch"].tolist()
        for column, dash_style in (("train_loss", "solid"), ("val_loss", "dash")):
            if column in group and group[column].notna().any():
                data.append(
                    {
                        "type": "scatter",
                        "x": x,
                        "y": _floats(group[column]),
                        "mode": "lines+markers",
                        "name": f"fold {fold} {column.split('_')[0]}",
                        "line": {"color": color, "dash": dash_style},
                        "legendgroup": str(fold),
                        "xaxis": "x",
                        "yaxis": "y",
                    }
                )
        if metric in group:
            data.append(
                {
                    "type": "scatter",
                    "x": x,
                    "y": _floats(group[metric]),
                    "mode": "lines+markers",
                    "name": f"fold {fold}",
                    "line": {"color": color, "dash": "dash"},
                    "legendgroup": str(fold),
                    "showlegend": False,
                    "xaxis": "x2",
                    "yaxis": "y2",
                }
            )
    mean = epochs[epochs["fold"] == -1].sort_values("epoch")
    if metric in mean and mean[metric].notna().any():
        data.append(
            {
                "type": "scatter",
                "x": mean["epoch"].tolist(),
                "y": _floats(mean[metric]),
                "mode": "lines",
                "name": "fold mean",
                "line": {"color": "#0f172a", "width": 3},
                "xaxis": "x2",
                "yaxis": "y2",
            }
        )
    last = int(epochs["epoch"].max()) if epochs["epoch"].notna().any() else 1
    for axis in ("xaxis", "xaxis2"):  # about 8 ticks
        layout[axis] = {
            **layout[axis],
            "title": {"text": "epoch"},
            "dtick": max(1, round(last / 8)),
        }
    return {"data": data, "layout": layout}


def roc_figure(folds: pd.DataFrame, classes: list[str]) -> dict:
    diagonal = {
        "type": "scatter",
        "x": [0, 1],
        "y": [0, 1],
        "mode": "lines",
        "line": {"color": "#cbd5e1", "dash": "dot"},
        "showlegend": False,
        "hoverinfo": "skip",
    }
    data = [diagonal]
    if "roc" not in folds:
        return {"data": data, "layout": _layout()}
    for i, r in enumerate(folds.to_dict("records")):
        try:
            curves = decode_cell("folds", "roc", r["roc"]) or {}
        except ValueError:
            curves = {}
        names = list(curves)
        if len(names) == 2 and len(classes) == 2:
            names = (
                [classes[1]] if classes[1] in curves else names[1:]
            )  # binary: the positive class
        for j, name in enumerate(names):
            c = curves[name]
            data.append(
                {
                    "type": "scatter",
                    "x": c["fpr"],
                    "y": c["tpr"],
                    "mode": "lines",
                    "name": f"fold {int(r['fold'])} · {name} (AUC {c.get('auc', float('nan')):.3f})",
                    "line": {
                        "color": PALETTE[(i if len(names) == 1 else j) % len(PALETTE)],
                        "dash": ("solid", "dash", "dot", "dashdot")[i % 4]
                        if len(names) > 1
                        else "solid",
                    },
                }
            )
    layout = _layout(
        xaxis={"title": {"text": "false positive rate"}, "range": [0, 1], "constrain": "domain"},
        yaxis={"title": {"text": "true positive rate"}, "range": [0, 1.02], "scaleanchor": "x"},
        legend={"orientation": "v", "x": 0.45, "y": 0.05, "bgcolor": "rgba(255,255,255,.8)"},
    )
    return {"data": data, "layout": layout}


def confusion_figure(folds: pd.DataFrame, classes: list[str]) -> dict:
    total = None
    for cell in folds.get("confusion_matrix", pd.Series(dtype=object)).dropna():
        try:
            matrix = decode_cell("folds", "confusion_matrix", cell).astype(float)
        except ValueError:
            continue
        total = matrix if total is None else total + matrix
    if total is None:
        return {"data": [], "layout": _layout()}
    names = classes if len(classes) == len(total) else [str(i) for i in range(len(total))]
    share = total / np.maximum(total.sum(1, keepdims=True), 1)
    many = len(names) > 8  # counts and shares no longer fit in a cell: shares only, counts on hover
    text = [
        [
            f"{share[i, j]:.0%}" if many else f"{int(total[i, j])}<br>{share[i, j]:.0%}"
            for j in range(len(names))
        ]
        for i in range(len(names))
    ]
    heatmap = {
        "type": "heatmap",
        "z": share.tolist(),
        "x": names,
        "y": names,
        "text": text,
        "texttemplate": "%{text}",
        "colorscale": get_colorscale("Blues"),  # by name, plotly.js draws Blues reversed
        "zmin": 0,
        "zmax": 1,
        "showscale": False,
        "customdata": total.tolist(),
        "hovertemplate": "true %{y}<br>predicted %{x}<br>%{customdata:.0f} cells, %{text}<extra></extra>"
        if many
        else "true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        "textfont": {"size": 9 if many else 12},
    }
    layout = _layout(
        xaxis={"title": {"text": "predicted"}, "tickangle": -45 if many else 0, "dtick": 1},
        yaxis={
            "title": {"text": "true"},
            "dtick": 1,
            "autorange": "reversed",
            "scaleanchor": "x",
            "constrain": "domain",
        },
    )
    return {"data": [heatmap], "layout": layout}


def config_text(params: dict) -> str:
    """The sampled configuration as YAML, floats to 6 significant digits, short lists inline."""

    def tidy(value):
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, dict):
            return {k: tidy(v) for k, v in value.items()}
        if isinstance(value, list):
            return [tidy(v) for v in value]
        return value

    return yaml.safe_dump(tidy(params), sort_keys=False, default_flow_style=None, width=100)


def _checkpoint_files(row) -> html.Div:
    path = row.get("checkpoint")
    if not isinstance(path, str) or not path:
        return html.Div()
    folder = Path(path)
    folds = sorted(p.name for p in folder.glob("fold_*")) if folder.is_dir() else []
    text = (
        f"fold models: {', '.join(folds)}"
        if folds
        else "the checkpoint directory is not reachable from this machine"
    )
    return html.Div(text, className="muted", style={"marginTop": "8px", "fontSize": "12px"})
