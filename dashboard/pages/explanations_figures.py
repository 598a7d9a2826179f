"""The Explanations page's cards below the grid: population maps, the sanity list, the quality
scores figure, prototype mosaics and attention maps of one trial and method."""

from __future__ import annotations

import math

from cytotune.explainers.job import layout as paths
from dash import html

from ..explain import Explanations
from . import common, population, sanity

# the sanity verdict, the model verdict's scores and counts have their own card
QUALITY_HIDDEN = (
    r"sanity_(?!rho$)|randomisation_|cascade_|n_distinct|duplicate_|evidence_ratio"
    r"|learned_head_|heldout_balanced_accuracy|chance_balanced_accuracy"
)


def extras(study, trial_id, method):
    """``(population, sanity, quality figure, prototypes, attention)`` of one trial and method."""
    explain = Explanations(study)
    return (
        population.blocks(explain, study.key, trial_id, method),
        sanity.trial_list(sanity.for_trial(study, trial_id)),
        quality_figure(explain, trial_id),
        figures(
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
        figures(
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


def figures(explain: Explanations, key, name, trial_id, caption, empty):
    """A mosaic of the figures the job listed in table ``name`` for ``trial_id``."""
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
