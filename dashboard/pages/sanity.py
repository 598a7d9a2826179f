"""Sanity verdicts on the pages: badges, the per-trial list with meanings, the warning shown
above the maps of a method that did not pass, and the CAM layer note."""

from __future__ import annotations

import shlex

import pandas as pd
from cytotune.explainers.job.verdicts import (
    SCORE_COLUMNS,
    cam_layers,
    describe,
    sanity_table,
    trial_scores,
)
from dash import dcc, html

from ..data import CACHE
from . import common

LABELS = {
    "passed": "passed",
    "failed": "failed sanity",
    "inconclusive": "sanity inconclusive",
    "error": "could not run",
    "untrained": "untrained model",
}
HIDDEN = ("failed", "inconclusive", "untrained")  # gallery methods hidden unless asked for


def verdicts(study) -> pd.DataFrame:
    """The study's sanity table (explainers.job.verdicts.sanity_table), cached on quality.parquet."""
    path = study.path / "explain" / "quality.parquet"
    if not path.is_file() and not (study.path / "explain" / "explain.json").is_file():
        return sanity_table(study.path, pd.DataFrame())
    anchor = path if path.is_file() else study.path / "explain" / "explain.json"
    return CACHE.get(anchor, "sanity", lambda: sanity_table(study.path))


# leaderboard / compare column id -> (header, the trials-frame column)
SCORE_HEADERS = {
    "explain_sanity": "sanity passed",
    "explain_deletion_auc": "deletion AUC",
    "explain_insertion_auc": "insertion AUC",
    "explain_in_cell": "in cell",
    "explain_score": "explanation score",
}


def scores(study) -> pd.DataFrame:
    """Per explained trial the explanation scores (explainers.job.verdicts.trial_scores)."""
    path = study.path / "explain" / "quality.parquet"
    if not path.is_file():
        return pd.DataFrame(columns=list(SCORE_COLUMNS))
    return CACHE.get(path, "trial-scores", lambda: trial_scores(study.path))


def with_scores(study, trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` with the explanation score columns (NaN for trials not explained)."""
    table = scores(study)
    if table.empty or trials.empty:
        return trials
    table = table.rename_axis("trial_id").reset_index()
    out = trials.drop(columns=[c for c in SCORE_COLUMNS if c in trials])
    out = out.assign(trial_id=out["trial_id"].astype(str)).merge(table, on="trial_id", how="left")
    out.index = trials.index
    return out


def for_trial(study, trial_id) -> dict[str, dict]:
    """method -> sanity row of one trial."""
    table = verdicts(study)
    rows = table[table["trial_id"] == str(trial_id)]
    return {r["method"]: r for r in rows.to_dict("records")}


def badge(verdict: str) -> html.Span:
    return html.Span(LABELS.get(verdict, verdict), className=f"badge sanity-{verdict}")


def method_options(methods: list[str], rows: dict[str, dict], show_failing: bool) -> list[dict]:
    """Dropdown options: methods that did not pass are hidden unless ``show_failing``, and
    labelled with their verdict when shown."""
    out = []
    for m in methods:
        verdict = rows.get(m, {}).get("verdict")
        if verdict in HIDDEN and not show_failing:
            continue
        label = m if verdict in (None, "passed") else f"{m} ⚠ {LABELS[verdict]}"
        out.append({"label": label, "value": m})
    return out


def warning(method: str | None, rows: dict[str, dict]):
    """The banner above the grid for the selected method (None when it passed or is unscored)."""
    row = rows.get(method or "")
    if row is None or row["verdict"] == "passed":
        return None
    kind = "error" if row["verdict"] in ("failed", "untrained") else "warn"
    return common.notice(
        [
            html.B(f"{method}: {describe(row)}. "),
            f"{row['meaning'][0].upper()}{row['meaning'][1:]}.",
        ],
        kind,
    )


def trial_list(rows: dict[str, dict]):
    """The trial's model verdict (learned / untrained, and why), then every method with its
    verdict, rho and interval, and what it means."""
    if not rows:
        return common.notice(
            "No sanity check for this trial yet: run `cytotune explain` with its quality stage.",
            "info",
        )
    items = []
    for method, row in sorted(rows.items(), key=lambda kv: (kv[1]["verdict"] == "passed", kv[0])):
        items.append(
            html.Li(
                [
                    html.B(method),
                    " ",
                    badge(row["verdict"]),
                    html.Span(
                        " " + describe(row).split(" ", 1)[-1]
                        if row["verdict"] != "error"
                        else " " + str(row["error"]),
                        className="muted",
                    ),
                    html.Div(row["meaning"], className="muted", style={"fontSize": "12px"}),
                ],
                **{"data-method": method, "data-verdict": row["verdict"]},
            )
        )
    listing = html.Ul(items, className="sanity-list")
    first = next(iter(rows.values()))
    model = first.get("model") or "unknown"
    if model == "unknown":  # a study explained before the model verdict existed
        return listing
    note = html.Div(
        [
            html.B("Model: "),
            badge(model) if model == "untrained" else html.Span(model),
            html.Span(f" {first.get('model_reason') or ''}", className="muted"),
        ],
        className="sanity-model",
        **{"data-model": model},
    )
    return html.Div([note, listing])


def summary_line(study, trial_id):
    """One line for the trial page: which methods passed, which did not and what that means."""
    rows = for_trial(study, trial_id)
    if not rows:
        return None
    bad = {m: r for m, r in rows.items() if r["verdict"] != "passed"}
    good = [m for m, r in rows.items() if r["verdict"] == "passed"]
    parts = [html.B("Explanation sanity: ")]
    if good:
        parts.append(f"passed: {', '.join(sorted(good))}. ")
    for m, r in sorted(bad.items()):
        parts += [badge(r["verdict"]), f" {m}: {describe(r)}; {r['meaning']}. "]
    return common.notice(parts, "warn" if bad else "info")


def layer_command(study, trial_id, method, layer) -> str:
    """The explain command that redoes ``method``'s maps of ``trial_id`` on ``layer`` (the
    method's options change, so only its parts are recomputed)."""
    return (
        f"cytotune explain --study {shlex.quote(str(study.path))} --trials {trial_id} "
        f"--methods {method}:layer={layer}"
    )


def layer_note(study, trial_id, method):
    """Which layer a CAM used, its map size, the usable alternatives and how to pick another."""
    info = cam_layers(study.path).get(str(trial_id), {}).get(method or "")
    if not info:
        return None
    shape = study.manifest().get("shape") or []
    crop = f"{shape[-2]}x{shape[-1]}" if len(shape) >= 2 else "the crop"
    used = ", ".join(
        f"{n} ({'x'.join(map(str, info['sizes'].get(n, [])))} map)" for n in info["layers"]
    )
    usable = [n for n in info.get("usable", {}) if n not in info["layers"]]
    text = [f"{method} reads layer {used}, upsampled to {crop}"]
    text.append(
        " (your choice)."
        if info.get("requested")
        else " (the deepest layer with a map of at least 4x4)."
    )
    if usable:
        text += [
            " Other usable layers (shallower: finer maps, less class-specific): ",
            dcc.Dropdown(
                [
                    {"label": f"{n} ({'x'.join(map(str, info['usable'][n]))} map)", "value": n}
                    for n in usable
                ],
                usable[-1],
                id="ex-layer-choice",
                clearable=False,
                style={"width": "300px", "display": "inline-block", "verticalAlign": "middle"},
            ),
            " explain with it: ",
            html.Code(layer_command(study, trial_id, method, usable[-1]), id="ex-layer-command"),
            dcc.Clipboard(
                target_id="ex-layer-command", title="copy", style={"display": "inline-block"}
            ),
        ]
    return html.Div(
        text, className="muted layer-note", style={"fontSize": "12px", "margin": "6px 0"}
    )
