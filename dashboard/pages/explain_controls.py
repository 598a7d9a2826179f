"""The Explanations page's controls: trial, method (failing methods hidden unless asked),
channels, display mode, map colours, scale top, smoothing, blend alpha and the cell filters."""

from __future__ import annotations

from cytotune.explainers.job.tiles import MAP_COLORMAPS
from dash import dcc, html

from . import common


def card(
    names,
    channel_options,
    first,
    trials,
    first_options,
    first_method,
    task,
    first_cells,
    have_crops,
):
    """The controls card of the page (ids ``ex-*``)."""
    return html.Div(
        [
            html.Div(
                [
                    field(
                        "trial",
                        dcc.Dropdown(trials, first, id="ex-trial", clearable=False),
                        170,
                    ),
                    field(
                        "method",
                        html.Div(
                            [
                                dcc.Dropdown(
                                    first_options,
                                    first_method,
                                    id="ex-method",
                                    clearable=False,
                                ),
                                dcc.Checklist(
                                    [
                                        {
                                            "label": " show methods that failed the sanity check",
                                            "value": "show",
                                        }
                                    ],
                                    [],
                                    id="ex-show-failing",
                                    style={"fontSize": "12px", "marginTop": "3px"},
                                ),
                            ]
                        ),
                        230,
                    ),
                    field(
                        "channels",
                        dcc.Checklist(
                            channel_options,
                            list(range(len(names))),
                            id="ex-channels",
                            inline=True,
                            inputStyle={"marginRight": "3px"},
                            labelStyle={"marginRight": "10px"},
                        ),
                        200,
                    ),
                    field(
                        "display",
                        dcc.RadioItems(
                            [
                                {"label": "crop | map", "value": "side"},
                                {"label": "blend", "value": "blend"},
                                {"label": "contours", "value": "contour"},
                            ],
                            "side",
                            id="ex-mode",
                            inline=True,
                            inputStyle={"marginRight": "3px"},
                            labelStyle={"marginRight": "10px"},
                        ),
                        230,
                    ),
                    field(
                        "map colours",
                        dcc.Dropdown(
                            [
                                {"label": "auto (a hue no channel uses)", "value": "auto"},
                                *(
                                    {"label": f"{c} (crop | map only)", "value": c}
                                    for c in MAP_COLORMAPS[1:]
                                ),
                            ],
                            "auto",
                            id="ex-cmap",
                            clearable=False,
                        ),
                        200,
                    ),
                    field(
                        "scale top",
                        dcc.Dropdown(
                            [
                                {"label": "99.5th percentile", "value": 99.5},
                                {"label": "99th percentile", "value": 99.0},
                                {"label": "95th percentile", "value": 95.0},
                                {"label": "maximum", "value": 100.0},
                            ],
                            99.5,
                            id="ex-pct",
                            clearable=False,
                        ),
                        150,
                    ),
                    field(
                        "smoothing",
                        dcc.Dropdown(
                            [
                                {"label": "off", "value": 0},
                                {"label": "1 px (light)", "value": 1},
                                {"label": "2 px", "value": 2},
                            ],
                            0,
                            id="ex-smooth",
                            clearable=False,
                        ),
                        110,
                    ),
                    field(
                        "blend alpha",
                        dcc.Slider(
                            0,
                            1,
                            0.05,
                            value=0.6,
                            id="ex-alpha",
                            marks={v: f"{v:g}" for v in (0, 0.25, 0.5, 0.75, 1)},
                        ),
                        260,
                    ),
                ],
                className="row",
            ),
            html.Div(
                [
                    field(
                        "true class",
                        dcc.Dropdown([], None, id="ex-true", placeholder="any"),
                        170,
                        hidden=task == "regression",
                    ),
                    field(
                        "predicted class",
                        dcc.Dropdown([], None, id="ex-pred", placeholder="any"),
                        170,
                        hidden=task == "regression",
                    ),
                    field(
                        "outcome",
                        dcc.RadioItems(
                            ["all", "correct", "wrong"],
                            "all",
                            id="ex-outcome",
                            inline=True,
                            inputStyle={"marginRight": "3px"},
                            labelStyle={"marginRight": "10px"},
                        ),
                        200,
                        hidden=task == "regression",
                    ),
                    field(
                        "confidence" if task != "regression" else "absolute error",
                        dcc.RangeSlider(id="ex-range", min=0, **range_props(first_cells, task)),
                        260,
                    ),
                ],
                className="row",
                style={"marginTop": "10px"},
            ),
            html.Div(
                None
                if have_crops
                else common.notice(
                    "The dataset is not reachable from here: overlays show the maps alone.",
                    "warn",
                )
            ),
        ],
        className="card",
    )


def channel_css(names) -> list[str]:
    """The tint each channel gets in the overlays (DNA blue, actin red, ...), as CSS colours."""
    from cytotune.explainers.methods.channels import channel_colors

    colors = channel_colors(list(range(len(names))), list(names))
    return [f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})" for r, g, b in colors]


def field(label, control, width, hidden=False):
    style = {"minWidth": f"{width}px", **({"display": "none"} if hidden else {})}
    return html.Div([html.Label(label), control], className="field", style=style)


def range_props(cells, task: str) -> dict:
    """The confidence slider (0..1), or for regression the absolute-error slider (0..largest)."""
    if task != "regression" or cells is None or cells.empty or not cells["abs_error"].notna().any():
        return {"max": 1, "step": 0.05, "value": [0, 1], "marks": {0: "0", 0.5: "0.5", 1: "1"}}
    top = float(f"{float(cells['abs_error'].max()) * 1.0001:.3g}") or 1.0
    return {
        "max": top,
        "step": top / 50,
        "value": [0, top],
        "marks": {0: "0", top / 2: f"{top / 2:.3g}", top: f"{top:.3g}"},
    }
