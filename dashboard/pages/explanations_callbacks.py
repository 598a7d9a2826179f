"""The Explanations page's callbacks and the views they draw. Each on-load view's outputs are
listed once (:data:`ON_LOAD`): the page is drawn with them (``explanations._prefill``) and the
callbacks redraw them on user changes only."""

from __future__ import annotations

import dash
from dash import Input, Output, State

from .. import memo
from ..data import StudyUnreadable
from ..explain import Explanations
from . import common, sanity
from . import explain_controls as controls
from . import explanations_figures as figures
from . import explanations_grid as grid_view

# What each on-load callback sets, in the order Dash would fire them on a fresh page.
ON_LOAD = {
    "trial": ("ex-method.options", "ex-method.value", "ex-true.options", "ex-pred.options",
              "ex-range.max", "ex-range.step", "ex-range.value", "ex-range.marks"),
    "notes": ("ex-sanity-warning.children", "ex-layer.children"),
    "grid": ("ex-grid.children", "ex-page-label.children", "ex-count.children", "ex-page.data"),
    "extras": ("ex-population.children", "ex-sanity.children", "ex-quality.figure",
               "ex-prototypes.children", "ex-attention.children"),
}  # fmt: skip
STUDY = State("ex-study", "data")


def outputs(name: str) -> list[Output]:
    """The Outputs of the on-load callback ``name``."""
    return [Output(*spec.split(".")) for spec in ON_LOAD[name]]


def trial_changed(study, trial_id, show_failing, method):
    """The method choices, class filters and slider of ``trial_id`` (ON_LOAD["trial"])."""
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


def method_notes(study, trial_id, method):
    """The sanity warning and the CAM layer note of a method (ON_LOAD["notes"])."""
    rows = sanity.for_trial(study, trial_id)
    return sanity.warning(method, rows), sanity.layer_note(study, trial_id, method)


def register(app, ctx):
    @app.callback(
        *outputs("trial"),
        Input("ex-trial", "value"),
        Input("ex-show-failing", "value"),
        State("ex-method", "value"),
        STUDY,
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def on_trial(trial_id, show_failing, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable:
            return [], None, [], [], dash.no_update, dash.no_update, dash.no_update, dash.no_update
        return memo.view(
            study,
            "ex-trial",
            memo.freeze((trial_id, show_failing, method)),
            lambda: trial_changed(study, trial_id, show_failing, method),
            trial_id=trial_id,
        )

    @app.callback(
        *outputs("notes"),
        Input("ex-trial", "value"),
        Input("ex-method", "value"),
        STUDY,
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def on_method(trial_id, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable:
            return None, None
        return memo.view(
            study,
            "ex-notes",
            (trial_id, method),
            lambda: method_notes(study, trial_id, method),
            trial_id=trial_id,
        )

    @app.callback(
        Output("ex-layer-command", "children"),
        Input("ex-layer-choice", "value"),
        State("ex-trial", "value"),
        State("ex-method", "value"),
        STUDY,
        prevent_initial_call=True,
    )
    def layer_choice(layer, trial_id, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable:
            return dash.no_update
        return sanity.layer_command(study, trial_id, method, layer)

    @app.callback(
        output=outputs("grid"),
        inputs=grid_view.INPUTS,
        state={"page": State("ex-page", "data"), "key": STUDY},
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def on_grid(cells, view, clicks, page, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable as exc:
            return common.notice(str(exc), "error"), "", "", 0
        trigger = dash.ctx.triggered_id
        return memo.view(
            study,
            "ex-grid",
            memo.freeze((cells, view, page, trigger)),
            lambda: grid_view.draw(study, cells, view, page, trigger),
            trial_id=cells["trial_id"],
        )

    @app.callback(
        *outputs("extras"),
        Input("ex-trial", "value"),
        Input("ex-method", "value"),
        STUDY,
        prevent_initial_call=True,  # drawn into the page by layout()
    )
    def on_extras(trial_id, method, key):
        try:
            study = ctx.catalog.get(key)
        except StudyUnreadable as exc:
            return common.notice(str(exc), "error"), "", {"data": [], "layout": {}}, "", ""
        return memo.view(
            study,
            "ex-extras",
            (trial_id, method),
            lambda: figures.extras(study, trial_id, method),
            trial_id=trial_id,
        )
