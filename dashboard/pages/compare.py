"""Compare: parallel coordinates, parameter importance, and paired tests over shared folds.

Families are compared through their best trials (by the chosen metric's fold mean) among those
scored at the study's full fidelity (every epoch and, where the trials table records it, every
fold), so a trial ASHA stopped after one epoch never stands for its family; any two trials can be
added. Tests: Nadeau-Bengio corrected resampled t-test and Wilcoxon signed-rank,
each with Holm and Bonferroni corrected p-values over the rows of the table.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from cytotune.engine.search.leaderboard import ranked
from dash import Input, Output, State, dash_table, dcc, html

from .. import stats
from ..data import CACHE, StudyUnreadable, metric_direction
from . import Page, common, pareto

PAGE = Page("compare", nav="Compare", order=20)

MAX_PARCOORDS = 3000
# Parallel-coordinates tick and axis-end labels: 3 significant digits (-2.38, not -2.38307).
TICKS = ".3~g"


def layout(ctx, study, params):
    trials = study.trials()
    if trials.empty:
        return html.Div([common.header(study), common.notice("No trial has reported yet.", "warn")])
    metric, _ = study.objective()
    metrics = study.metrics()
    families = sorted(trials["family"].dropna().astype(str).unique())
    done = trials[trials[f"val/{metric}"].notna()] if f"val/{metric}" in trials else trials
    options = [
        {
            "label": f"{r['trial_id']} · {r['family']} · {r.get(f'val/{metric}', float('nan')):.4f}",
            "value": r["trial_id"],
        }
        for r in done.sort_values("rank").head(500).to_dict("records")
    ]
    return html.Div(
        [
            dcc.Store(id="cmp-study", data=study.key),
            common.header(study),
            html.Div(
                [
                    html.Div(
                        [
                            html.Label("metric"),
                            dcc.Dropdown(metrics, metric, id="cmp-metric", clearable=False),
                        ],
                        className="field",
                        style={"minWidth": "240px"},
                    ),
                    html.Div(
                        [
                            html.Label("family (parallel coordinates, importance)"),
                            dcc.Dropdown(
                                families, None, id="cmp-family", placeholder="all families"
                            ),
                        ],
                        className="field",
                        style={"minWidth": "260px"},
                    ),
                    html.Div(
                        [
                            html.Label("trial A"),
                            dcc.Dropdown(options, None, id="cmp-a", placeholder="pick a trial"),
                        ],
                        className="field",
                        style={"minWidth": "280px"},
                    ),
                    html.Div(
                        [
                            html.Label("trial B"),
                            dcc.Dropdown(options, None, id="cmp-b", placeholder="pick a trial"),
                        ],
                        className="field",
                        style={"minWidth": "280px"},
                    ),
                ],
                className="row card",
            ),
            common.card(
                "Parallel coordinates",
                dcc.Graph(
                    id="cmp-parcoords", config={"displaylogo": False}, style={"height": "380px"}
                ),
                sub=f"one line per trial (the best {MAX_PARCOORDS:,} when there are more); drag on an axis to select a range",
            ),
            html.Div(
                [
                    common.card(
                        "Parameter importance",
                        dcc.Graph(
                            id="cmp-importance",
                            config={"displaylogo": False},
                            style={"height": "340px"},
                        ),
                        html.Div(
                            id="cmp-importance-note", className="muted", style={"fontSize": "12px"}
                        ),
                    ),
                    common.card(
                        "Families: per-fold scores of each family's best fully trained trial",
                        dcc.Graph(
                            id="cmp-families",
                            config={"displaylogo": False},
                            style={"height": "340px"},
                        ),
                        html.Div(
                            id="cmp-families-note", className="muted", style={"fontSize": "12px"}
                        ),
                    ),
                ],
                className="grid2",
            ),
            common.card("Paired tests over shared folds", html.Div(id="cmp-tests")),
            pareto.card(study),
        ]
    )


def register(app, ctx):
    pareto.register(app, ctx)

    @app.callback(
        Output("cmp-parcoords", "figure"),
        Output("cmp-importance", "figure"),
        Output("cmp-importance-note", "children"),
        Output("cmp-families", "figure"),
        Output("cmp-families-note", "children"),
        Output("cmp-tests", "children"),
        Input("cmp-metric", "value"),
        Input("cmp-family", "value"),
        Input("cmp-a", "value"),
        Input("cmp-b", "value"),
        Input("version", "data"),
        State("cmp-study", "data"),
    )
    def update(metric, family, a, b, _version, key):
        try:
            study = ctx.catalog.get(key)
            trials = study.trials()
            folds = study.table("folds")
        except StudyUnreadable as exc:
            empty = go.Figure()
            return empty, empty, "", empty, "", common.notice(str(exc), "error")
        mode = metric_direction(metric)
        subset = trials[trials["family"] == family] if family else trials
        parcoords = parcoords_figure(subset, metric, family)
        importance, note = importance_figure(study, subset, metric, family)
        epochs, k = study.fidelity()
        full = full_fidelity(trials, epochs, k)
        best = family_best(trials[full], metric, mode)
        scores = fold_scores(folds, metric)
        families_fig = families_figure(best, scores, metric)
        named, pairs = pairs_to_test(best, scores, a, b)
        rows = stats.paired_table(named, pairs, test_train_ratio(folds)) if pairs else []
        left_out = sorted(set(trials["family"].dropna().astype(str)) - set(best))
        families_note = fidelity_note(trials, full, epochs, k, left_out)
        return (
            parcoords,
            importance,
            note,
            families_fig,
            families_note,
            tests_table(rows, metric, folds),
        )


def pairs_to_test(best: dict[str, str], scores: dict, a: str | None, b: str | None):
    """Every pair of family bests, plus the chosen trials A and B first (unless they are one of
    those pairs already: a duplicate row would also change the Holm and Bonferroni p-values)."""
    named = {f"{fam} ({tid})": scores.get(tid, {}) for fam, tid in best.items()}
    pairs = list(itertools.combinations(named, 2))
    shown = [set(pair) for pair in itertools.combinations(best.values(), 2)]
    if a and b and a != b and {a, b} not in shown:
        named[f"trial {a}"], named[f"trial {b}"] = scores.get(a, {}), scores.get(b, {})
        pairs.insert(0, (f"trial {a}", f"trial {b}"))
    return named, pairs


def full_fidelity(trials: pd.DataFrame, max_epochs: int | None, k: int | None) -> pd.Series:
    """Trials scored like the study's finished ones: every epoch (``max_epochs``, else the most
    any trial has) and every fold where the trials table records ``folds_done``."""
    if trials.empty or "epochs_done" not in trials:
        return pd.Series(True, index=trials.index)
    epochs = pd.to_numeric(trials["epochs_done"], errors="coerce")
    full = epochs >= (max_epochs or epochs.max())
    if k and "folds_done" in trials:
        done = pd.to_numeric(trials["folds_done"], errors="coerce")
        full &= done.isna() | (done >= k)
    return full.fillna(False)


def fidelity_note(trials, full, epochs, k, left_out: list[str]) -> str:
    """What the family comparison compares, and which families it leaves out."""
    scope = f"{epochs or int(pd.to_numeric(trials['epochs_done']).max())} epochs"
    scope += f" on all {k} folds" if k and "folds_done" in trials else ""
    text = (
        f"Each family's best trial among the {int(full.sum())} of {len(trials)} trials trained to "
        f"{scope}; trials stopped earlier (pruned) are scored at a lower fidelity and are not "
        "compared with them."
    )
    if left_out:
        text += f" Left out (no trial trained that far): {', '.join(left_out)}."
    return text


def family_best(trials: pd.DataFrame, metric: str, mode: str) -> dict[str, str]:
    """family -> trial_id of its best trial by the metric's fold mean: the family's first in the
    leaderboard's order (:func:`~cytotune.engine.search.leaderboard.ranked`; ties go to the
    trial that started first)."""
    key = f"val/{metric}"
    if key not in trials:
        return {}
    order = ranked(trials[trials[key].notna()], key, mode)
    return {str(f): str(g.iloc[0]["trial_id"]) for f, g in order.groupby("family", sort=True)}


def fold_scores(folds: pd.DataFrame, metric: str) -> dict[str, dict[int, float]]:
    if folds.empty or metric not in folds:
        return {}
    out: dict[str, dict[int, float]] = {}
    for tid, fold, value in folds[["trial_id", "fold", metric]].itertuples(index=False):
        out.setdefault(str(tid), {})[int(fold)] = float(value)
    return out


def test_train_ratio(folds: pd.DataFrame) -> float:
    """n_test / n_train of a fold: from the validation sizes, else 1 / (K - 1)."""
    if folds.empty:
        return 0.25
    sizes = folds.drop_duplicates("fold").set_index("fold").get("n_val")
    k = folds["fold"].nunique()
    if sizes is not None and sizes.notna().all() and sizes.sum() > 0 and k > 1:
        total = float(sizes.sum())
        return float(np.mean(sizes / (total - sizes)))
    return 1.0 / max(1, k - 1)


def _encode(series: pd.Series) -> tuple[np.ndarray, list | None]:
    numbers = pd.to_numeric(series, errors="coerce")
    if numbers.notna().sum() == series.notna().sum():
        return numbers.to_numpy(dtype=float), None
    labels = sorted(series.dropna().astype(str).unique())
    lookup = {v: i for i, v in enumerate(labels)}
    return series.map(lambda v: lookup.get(str(v), np.nan) if pd.notna(v) else np.nan).to_numpy(
        dtype=float
    ), labels


def param_columns(trials: pd.DataFrame, family: str | None) -> list[str]:
    """Parameters that vary: the family's own (when one is chosen) and the shared train.* ones."""
    columns = [c for c in trials.columns if c.startswith("param.")]
    if family:
        columns = [c for c in columns if c.startswith((f"param.{family}.", "param.train."))]
    else:
        columns = [c for c in columns if c.startswith("param.train.")]
    return [c for c in columns if trials[c].notna().all() and trials[c].astype(str).nunique() > 1]


def parcoords_figure(trials: pd.DataFrame, metric: str, family: str | None) -> go.Figure:
    key = f"val/{metric}"
    frame = trials[trials[key].notna()] if key in trials else trials.iloc[:0]
    if len(frame) > MAX_PARCOORDS:
        frame = frame.sort_values("rank").head(MAX_PARCOORDS)
    fig = go.Figure()
    if frame.empty:
        return fig
    dims = []
    if not family and frame["family"].nunique() > 1:
        values, labels = _encode(frame["family"])
        dims.append(
            {
                "label": "family",
                "values": values,
                "tickvals": list(range(len(labels))),
                "ticktext": labels,
            }
        )
    for column in param_columns(frame, family):
        values, labels = _encode(frame[column])
        dim = {"label": column.split(".", 2)[-1], "values": values, "tickformat": TICKS}
        if labels is not None:
            dim.update(tickvals=list(range(len(labels))), ticktext=[t[:14] for t in labels])
        elif column.endswith(".lr") and np.nanmin(values) > 0:
            dim.update(values=np.log10(values), label="log10 lr")
        dims.append(dim)
    dims.append({"label": metric, "values": frame[key].to_numpy(dtype=float), "tickformat": TICKS})
    fig.add_trace(
        go.Parcoords(
            line={
                "color": frame[key],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"thickness": 14},
            },
            dimensions=dims,
        )
    )
    fig.update_layout(**{**common.FIG_LAYOUT, "margin": {"l": 70, "r": 60, "t": 70, "b": 30}})
    return fig


def importance_figure(study, trials: pd.DataFrame, metric: str, family: str | None):
    """Random-forest (impurity) importance of each parameter for the metric's fold mean."""
    key = f"val/{metric}"
    frame = trials[trials[key].notna()] if key in trials else trials.iloc[:0]
    columns = param_columns(frame, family)
    if not family and frame["family"].nunique() > 1:
        columns = ["family", *columns]
    fig = go.Figure()
    if len(frame) < 5 or not columns:
        return fig, f"Needs at least 5 scored trials with varying parameters (have {len(frame)})."

    def compute():
        from sklearn.ensemble import RandomForestRegressor

        sample = frame.sample(n=min(len(frame), 2000), random_state=0)
        x = np.column_stack([np.nan_to_num(_encode(sample[c])[0], nan=-1.0) for c in columns])
        forest = RandomForestRegressor(
            n_estimators=64, min_samples_leaf=2, random_state=0, n_jobs=1
        )
        forest.fit(x, sample[key].to_numpy(dtype=float))
        return dict(zip(columns, forest.feature_importances_.tolist())), len(sample)

    importance, n = CACHE.get(
        study.path / "trials.parquet", f"importance:{metric}:{family}", compute
    )
    order = sorted(importance, key=importance.get)
    fig.add_trace(
        go.Bar(
            x=[importance[c] for c in order],
            y=[c.replace("param.", "") for c in order],
            orientation="h",
            marker_color="#2563eb",
        )
    )
    fig.update_layout(**common.FIG_LAYOUT, xaxis_title="importance (share of variance explained)")
    return (
        fig,
        f"scikit-learn random forest on {n} trials ({family or 'all families'}), impurity importance.",
    )


def families_figure(best: dict[str, str], scores: dict, metric: str) -> go.Figure:
    fig = go.Figure()
    for i, (fam, tid) in enumerate(best.items()):
        values = scores.get(tid, {})
        if not values:
            continue
        folds = sorted(values)
        fig.add_trace(
            go.Box(
                y=[values[f] for f in folds],
                name=f"{fam}<br><sub>{tid}</sub>",
                boxpoints="all",
                jitter=0.3,
                pointpos=0,
                text=[f"fold {f}" for f in folds],
                marker_color=common_color(i),
            )
        )
    fig.update_layout(**common.FIG_LAYOUT, yaxis_title=metric, showlegend=False)
    if not fig.data:
        fig.update_layout(xaxis_visible=False, yaxis_visible=False)
        fig.add_annotation(
            text="no per-fold results yet",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
        )
    return fig


def common_color(i: int) -> str:
    return ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")[i % 6]


def _p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def tests_table(rows: list[dict], metric: str, folds: pd.DataFrame):
    if rows and all(r["folds"] == 0 for r in rows):
        return common.notice(
            "No per-fold results in folds.parquet yet: they are written when trials end.", "warn"
        )
    if not rows:
        return common.notice(
            "Two families or two chosen trials with per-fold results are needed for a test.", "warn"
        )
    k = folds["fold"].nunique() if not folds.empty else 0
    data = [
        {
            "A": r["a"],
            "B": r["b"],
            "folds": r["folds"],
            "mean diff (A-B)": "-" if math.isnan(r["mean_diff"]) else f"{r['mean_diff']:+.4f}",
            "t (NB)": "-" if math.isnan(r["t"]) else f"{r['t']:.3f}",
            "p (NB)": _p(r["p_nb"]),
            "p Holm": _p(r["p_nb_holm"]),
            "p Bonferroni": _p(r["p_nb_bonferroni"]),
            "W": "-" if math.isnan(r["w"]) else f"{r['w']:g}",
            "p (Wilcoxon)": _p(r["p_wilcoxon"]),
            "p Wilcoxon Holm": _p(r["p_wilcoxon_holm"]),
            "p Wilcoxon Bonferroni": _p(r["p_wilcoxon_bonferroni"]),
            "NB Holm < 0.05": "yes" if r["p_nb_holm"] < 0.05 else "no",
        }
        for r in rows
    ]
    columns = [{"id": c, "name": c} for c in data[0]]
    return html.Div(
        [
            dash_table.DataTable(
                id="cmp-table",
                columns=columns,
                data=data,
                style_cell={
                    "fontFamily": common.FONT,
                    "fontSize": "12px",
                    "padding": "5px 8px",
                    "textAlign": "right",
                },
                style_cell_conditional=[
                    {"if": {"column_id": c}, "textAlign": "left"} for c in ("A", "B")
                ],
                style_header={
                    "backgroundColor": "#f1f5f9",
                    "fontWeight": "600",
                    "whiteSpace": "normal",
                },
                style_data_conditional=[
                    {
                        "if": {"filter_query": '{NB Holm < 0.05} = "yes"'},
                        "backgroundColor": "#f0fdf4",
                    },
                    {
                        "if": {"filter_query": '{NB Holm < 0.05} = "yes"', "column_id": "p Holm"},
                        "color": "#15803d",
                        "fontWeight": "600",
                    },
                ],
            ),
            html.Div(
                f"{metric} per fold over {k} shared folds. NB = Nadeau-Bengio corrected resampled t-test "
                f"(variance x (1/K + n_test/n_train), {max(k - 1, 0)} df); Wilcoxon signed-rank, exact, two-sided "
                f"(with K = {k} folds its smallest possible p is {2 / 2**k if k else float('nan'):.3g}). "
                "Holm and Bonferroni correct over the rows of this table.",
                className="muted",
                style={"fontSize": "12px", "marginTop": "6px"},
            ),
        ]
    )
