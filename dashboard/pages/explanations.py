"""Explanations: a filterable grid of crops with attribution overlays, population maps,
prototype mosaics, attention maps and explanation quality scores (read from ``explain/``)."""

from __future__ import annotations

import math
import urllib.parse

import dash
from cytotune.explainers.job import layout as paths
from cytotune.explainers.job.tiles import MODES
from dash import Input, Output, State, dcc, html

from .. import memo
from ..data import StudyUnreadable
from ..explain import Explanations, filter_cells
from . import Page, common, population, sanity
from . import explain_controls as controls

PAGE_SIZE = 24
# the sanity verdict, the model verdict's scores and counts have their own card
QUALITY_HIDDEN = (
    r"sanity_(?!rho$)|randomisation_|cascade_|n_distinct|duplicate_|evidence_ratio"
    r"|learned_head_|heldout_balanced_accuracy|chance_balanced_accuracy"
)

PAGE = Page("explanations", nav="Explanations", order=30, memo=True)


def layout(ctx, study, params):
    explain = Explanations(study)
    methods = explain.methods()
    if not methods:
        hint = (
            f"No explanations in {explain.root} yet. Run `cytotune explain --study {study.path}` to write "
            "attribution maps, overlays, population maps and quality scores there."
        )
        return html.Div([common.header(study), common.notice(hint, "warn")])
    trials = list(methods)
    first = params.get("trial") if params.get("trial") in methods else trials[0]
    verdicts = sanity.for_trial(study, first)
    first_options = sanity.method_options(methods[first], verdicts, False) or [
        {"label": m, "value": m} for m in methods[first]
    ]
    first_method = first_options[0]["value"]
    names = explain.channel_names()
    task = study.task()
    first_cells = explain.cells(first, first_method)
    have_crops = (
        study.dataset_path() is not None and (study.dataset_path() / "manifest.json").is_file()
    )
    channel_options = [
        {
            "label": html.Span([html.Span(className="swatch", style={"background": rgb}), name]),
            "value": i,
        }
        for i, (name, rgb) in enumerate(zip(names, controls.channel_css(names)))
    ]
    page = html.Div(
        [
            dcc.Store(id="ex-study", data=study.key),
            dcc.Store(id="ex-page", data=0),
            common.header(study),
            controls.card(
                names,
                channel_options,
                first,
                trials,
                first_options,
                first_method,
                task,
                first_cells,
                have_crops,
            ),
            html.Div(
                [
                    html.Div(
                        [
                            html.Button("‹ previous", id="ex-prev", n_clicks=0),
                            html.Span(id="ex-page-label"),
                            html.Button("next ›", id="ex-next", n_clicks=0),
                            html.Span(
                                id="ex-count", className="muted", style={"marginLeft": "auto"}
                            ),
                        ],
                        className="pager",
                    ),
                    html.Div(id="ex-sanity-warning"),
                    html.Div(id="ex-layer"),
                    html.Div(id="ex-grid", className="tiles"),
                ],
                className="card",
            ),
            common.card(
                "Population maps",
                html.Div(id="ex-population"),
                sub="geometric means over every explained cell of the true class; correlation: "
                "local Pearson r between the map and each channel",
            ),
            html.Div(
                [
                    common.card(
                        "Sanity check",
                        html.Div(id="ex-sanity"),
                        sub="maps of the trained model vs weight-randomised copies (fp32, 95% "
                        "interval over cells)",
                    ),
                    common.card(
                        "Explanation quality",
                        dcc.Graph(
                            id="ex-quality",
                            config={"displaylogo": False},
                            style={"height": "440px"},
                        ),
                    ),
                ],
                className="grid2",
            ),
            common.card(
                "Prototype mosaics",
                html.Div(id="ex-prototypes"),
                sub="top training patches per prototype",
            ),
            common.card(
                "Attention maps", html.Div(id="ex-attention"), sub="channel-attention families"
            ),
        ]
    )
    return _prefill(page, study, first)


# What each on-load callback sets, in the order Dash would fire them on a fresh page.
ON_LOAD = {
    "trial": ("ex-method.options", "ex-method.value", "ex-true.options", "ex-pred.options",
              "ex-range.max", "ex-range.step", "ex-range.value", "ex-range.marks"),
    "notes": ("ex-sanity-warning.children", "ex-layer.children"),
    "grid": ("ex-grid.children", "ex-page-label.children", "ex-count.children", "ex-page.data"),
    "extras": ("ex-population.children", "ex-sanity.children", "ex-quality.figure",
               "ex-prototypes.children", "ex-attention.children"),
}  # fmt: skip


def _prefill(page, study, trial_id):
    """The page with what its callbacks would draw on load already in it: one request instead
    of five per page view (the callbacks fire on user changes only)."""

    def value(cid, prop="value"):
        return getattr(page[cid], prop, None)

    def apply(name, outputs):
        for spec, out in zip(ON_LOAD[name], outputs):
            cid, prop = spec.split(".")
            setattr(page[cid], prop, out)

    apply("trial", _trial_changed(study, trial_id, value("ex-show-failing"), value("ex-method")))
    method = value("ex-method")
    apply("notes", _method_notes(study, trial_id, method))
    controls_now = [
        value(c)
        for c in ("ex-channels", "ex-cmap", "ex-alpha", "ex-mode", "ex-pct", "ex-smooth")
        + ("ex-true", "ex-pred", "ex-outcome", "ex-range")
    ]
    apply("grid", _grid(study, trial_id, method, *controls_now, value("ex-page", "data"), None))
    apply("extras", _extras(study, trial_id, method))
    return page


def register(app, ctx):
    @app.callback(
        Output("ex-method", "options"),
        Output("ex-method", "value"),
        Output("ex-true", "options"),
        Output("ex-pred", "options"),
        Output("ex-range", "max"),
        Output("ex-range", "step"),
        Output("ex-range", "value"),
        Output("ex-range", "marks"),
        Input("ex-trial", "value"),
        Input("ex-show-failing", "value"),
        State("ex-method", "value"),
        State("ex-study", "data"),
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def trial_changed(trial_id, show_failing, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable:
            return [], None, [], [], dash.no_update, dash.no_update, dash.no_update, dash.no_update
        return memo.view(
            study,
            "ex-trial",
            memo.freeze((trial_id, show_failing, method)),
            lambda: _trial_changed(study, trial_id, show_failing, method),
            trial_id=trial_id,
        )

    @app.callback(
        Output("ex-sanity-warning", "children"),
        Output("ex-layer", "children"),
        Input("ex-trial", "value"),
        Input("ex-method", "value"),
        State("ex-study", "data"),
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def method_notes(trial_id, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable:
            return None, None
        return memo.view(
            study,
            "ex-notes",
            (trial_id, method),
            lambda: _method_notes(study, trial_id, method),
            trial_id=trial_id,
        )

    @app.callback(
        Output("ex-layer-command", "children"),
        Input("ex-layer-choice", "value"),
        State("ex-trial", "value"),
        State("ex-method", "value"),
        State("ex-study", "data"),
        prevent_initial_call=True,
    )
    def layer_choice(layer, trial_id, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable:
            return dash.no_update
        return sanity.layer_command(study, trial_id, method, layer)

    @app.callback(
        Output("ex-grid", "children"),
        Output("ex-page-label", "children"),
        Output("ex-count", "children"),
        Output("ex-page", "data"),
        Input("ex-trial", "value"),
        Input("ex-method", "value"),
        Input("ex-channels", "value"),
        Input("ex-cmap", "value"),
        Input("ex-alpha", "value"),
        Input("ex-mode", "value"),
        Input("ex-pct", "value"),
        Input("ex-smooth", "value"),
        Input("ex-true", "value"),
        Input("ex-pred", "value"),
        Input("ex-outcome", "value"),
        Input("ex-range", "value"),
        Input("ex-prev", "n_clicks"),
        Input("ex-next", "n_clicks"),
        State("ex-page", "data"),
        State("ex-study", "data"),
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def grid(
        trial_id,
        method,
        channels,
        cmap,
        alpha,
        mode,
        pct,
        smooth,
        true,
        pred,
        outcome,
        span,
        _prev,
        _next,
        page,
        key,
    ):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable as exc:
            return common.notice(str(exc), "error"), "", "", 0
        trigger = dash.ctx.triggered_id
        args = (trial_id, method, channels, cmap, alpha, mode, pct, smooth, true, pred, outcome)
        return memo.view(
            study,
            "ex-grid",
            memo.freeze((*args, span, page, trigger)),
            lambda: _grid(study, *args, span, page, trigger),
            trial_id=trial_id,
        )

    @app.callback(
        Output("ex-population", "children"),
        Output("ex-sanity", "children"),
        Output("ex-quality", "figure"),
        Output("ex-prototypes", "children"),
        Output("ex-attention", "children"),
        Input("ex-trial", "value"),
        Input("ex-method", "value"),
        State("ex-study", "data"),
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def extras(trial_id, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable as exc:
            return common.notice(str(exc), "error"), "", {"data": [], "layout": {}}, "", ""
        return memo.view(
            study,
            "ex-extras",
            (trial_id, method),
            lambda: _extras(study, trial_id, method),
            trial_id=trial_id,
        )


def _trial_changed(study, trial_id, show_failing, method):
    explain = Explanations(study)
    methods = explain.methods().get(trial_id, [])
    options = sanity.method_options(
        methods, sanity.for_trial(study, trial_id), bool(show_failing)
    ) or [{"label": m, "value": m} for m in methods]
    shown = [o["value"] for o in options]
    method = method if method in shown else (shown[0] if shown else None)
    cells = explain.cells(trial_id, method) if method else None
    span = controls.range_props(cells, study.task())
    slider = (span["max"], span["step"], span["value"], span["marks"])
    if cells is None or cells.empty:
        return options, method, [], [], *slider
    true = sorted(c for c in cells["label"].astype(str).unique() if c)
    pred = sorted(c for c in cells["prediction"].astype(str).unique() if c) if true else []
    return options, method, true, pred, *slider


def _method_notes(study, trial_id, method):
    rows = sanity.for_trial(study, trial_id)
    return sanity.warning(method, rows), sanity.layer_note(study, trial_id, method)


def _grid(
    study,
    trial_id,
    method,
    channels,
    cmap,
    alpha,
    mode,
    pct,
    smooth,
    true,
    pred,
    outcome,
    span,
    page,
    trigger,
):
    explain = Explanations(study)
    cells = explain.cells(trial_id, method) if trial_id and method else None
    if cells is None or cells.empty:
        return common.notice("No maps for this trial and method.", "warn"), "", "", 0
    regression = study.task() == "regression"
    if regression and "abs_error" in cells and cells["abs_error"].notna().any():
        error, confidence = tuple(span), None
    else:
        error, confidence = None, tuple(span or (0, 1))
    shown = filter_cells(cells, true, pred, outcome, confidence, error)
    pages = max(1, math.ceil(len(shown) / PAGE_SIZE))
    page = int(page or 0)
    page = (
        page - 1
        if trigger == "ex-prev"
        else page + 1
        if trigger == "ex-next"
        else (
            page
            if trigger in ("ex-alpha", "ex-cmap", "ex-channels", "ex-mode", "ex-pct", "ex-smooth")
            else 0
        )
    )
    page = min(max(page, 0), pages - 1)
    chunk = shown.iloc[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    explain.prefetch(chunk["cell_id"].astype(str).tolist())
    view = {"mode": mode, "pct": pct, "smooth": smooth}
    tiles = [
        _tile(study.key, trial_id, method, r, channels, cmap, alpha, regression, view)
        for r in chunk.to_dict("records")
    ]
    if not tiles:
        tiles = [common.notice("No cell matches these filters.", "warn")]
    count = f"{len(shown):,} of {len(cells):,} explained cells"
    return tiles, f"page {page + 1} of {pages}", count, page


def _extras(study, trial_id, method):
    explain = Explanations(study)
    return (
        population.blocks(explain, study.key, trial_id, method),
        sanity.trial_list(sanity.for_trial(study, trial_id)),
        quality_figure(explain, trial_id),
        _figures(
            explain,
            study.key,
            "prototypes",
            trial_id,
            lambda r: (
                f"fold {r.get('fold')} · prototype {r.get('prototype')} · {r.get('class', '')}"
                + (
                    f" (duplicate of {int(r['duplicate_of'])})"
                    if _present(r.get("duplicate_of"))
                    else ""
                )
            ),
            "This trial's family has no prototypes.",
        ),
        _figures(
            explain,
            study.key,
            "attention",
            trial_id,
            lambda r: (
                f"cell {r.get('cell_id')}"
                + (f" · channel pairs: {_pairs(r.get('pairs'))}" if _pairs(r.get("pairs")) else "")
            ),
            "This trial's family has no channel attention.",
        ),
    )


def _pairs(value) -> str:
    if value is None or isinstance(value, float) or len(value) == 0:
        return ""
    return value if isinstance(value, str) else ", ".join(map(str, list(value)))


def _present(value) -> bool:
    return (
        value is not None and not (isinstance(value, float) and math.isnan(value)) and value != -1
    )


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


def _tile(key, trial_id, method, row, channels, cmap, alpha, regression, view=None):
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


def _figures(explain: Explanations, key, name, trial_id, caption, empty):
    frame = explain.table(name)
    if frame.empty or "trial_id" not in frame:
        return common.notice(empty, "info")
    frame = frame[frame["trial_id"].astype(str) == str(trial_id)]
    if frame.empty:
        return common.notice(empty, "info")
    items = []
    for r in frame.head(48).to_dict("records"):
        rel = _locate(explain, name, trial_id, r)
        if rel is None:
            continue
        items.append(
            html.Div(
                [
                    html.Img(src=common.file_url(key, rel)),
                    html.Div(
                        caption(r),
                        className="muted",
                        title=caption(r),
                        style={"fontSize": "12px", "overflowWrap": "anywhere"},
                    ),
                ]
            )
        )
    return html.Div(items, className="mosaics") if items else common.notice(empty, "info")


def _locate(explain: Explanations, name: str, trial_id, row) -> str | None:
    """The figure's file: where layout.py puts it, else its ``path`` (study- or explain-relative)."""
    candidates = []
    if name == "prototypes" and _present(row.get("fold")) and _present(row.get("prototype")):
        candidates.append(
            paths.prototype_path(
                explain.study.path, str(trial_id), int(row["fold"]), int(row["prototype"])
            )
        )
    if name == "attention" and row.get("cell_id") is not None:
        candidates.append(
            paths.attention_path(explain.study.path, str(trial_id), str(row["cell_id"]))
        )
    if row.get("path"):
        candidates += [explain.study.path / str(row["path"]), explain.root / str(row["path"])]
    for candidate in candidates:
        rel = explain.relative(candidate)
        if rel is not None:
            return rel
    return None


def quality_figure(explain: Explanations, trial_id) -> dict:
    """Quality scores of every method for one trial, as horizontal grouped bars."""
    frame = explain.table("quality")
    layout = {
        **common.FIG_LAYOUT,
        "barmode": "group",
        "xaxis": {"title": {"text": "mean ± std over cells"}},
    }
    if frame.empty or "trial_id" not in frame:
        layout["xaxis"] = {"visible": False}
        layout["yaxis"] = {"visible": False}
        layout["annotations"] = [
            {
                "text": "no quality scores",
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
            }
        ]
        return {"data": [], "layout": layout}
    frame = frame[frame["trial_id"].astype(str) == str(trial_id)]
    # scores on a 0-1 scale; the sanity verdict and its interval have their own card
    frame = frame[~frame["metric"].astype(str).str.match(QUALITY_HIDDEN)]
    data = []
    for method, group in frame.groupby("method", sort=True):
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "y": group["metric"].astype(str).tolist(),
                "x": group["mean"].astype(float).round(4).tolist(),
                "error_x": {
                    "type": "data",
                    "array": group["std"].fillna(0).astype(float).round(4).tolist(),
                },
                "name": str(method),
            }
        )
    layout["yaxis"] = {"autorange": "reversed", "automargin": True}
    layout["margin"] = {"l": 10, "r": 15, "t": 30, "b": 45}
    return {"data": data, "layout": layout}
