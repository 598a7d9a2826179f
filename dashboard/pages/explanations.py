"""Explanations: a filterable grid of crops with attribution overlays, population maps,
prototype mosaics, attention maps and explanation quality scores (read from ``explain/``)."""

from __future__ import annotations

from dash import dcc, html

from ..explain import Explanations
from . import Page, common, sanity
from . import explain_controls as controls
from . import explanations_callbacks as callbacks
from . import explanations_figures as figures
from . import explanations_grid as grid
from .explanations_callbacks import ON_LOAD, register

__all__ = ["ON_LOAD", "PAGE", "layout", "register"]

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


def _prefill(page, study, trial_id):
    """The page with what its callbacks would draw on load already in it: one request instead
    of five per page view (the callbacks fire on user changes only)."""

    def value(cid, prop="value"):
        return getattr(page[cid], prop, None)

    def apply(name, outputs):
        for spec, out in zip(ON_LOAD[name], outputs):
            cid, prop = spec.split(".")
            setattr(page[cid], prop, out)

    apply(
        "trial",
        callbacks.trial_changed(study, trial_id, value("ex-show-failing"), value("ex-method")),
    )
    method = value("ex-method")
    apply("notes", callbacks.method_notes(study, trial_id, method))
    cells = {**grid.values_in(page, grid.CELLS), "trial_id": trial_id, "method": method}
    view = grid.values_in(page, grid.VIEW)
    apply("grid", grid.draw(study, cells, view, value("ex-page", "data"), None))
    apply("extras", figures.extras(study, trial_id, method))
    return page
