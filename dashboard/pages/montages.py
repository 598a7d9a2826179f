"""Detection montages of datasets built by ``cytotune crop``, for the Studies page.

``cytotune crop`` draws each of its first fields' detections as ``DATASET/crop/montage/<field>.png``
and records ``"generator": "cytotune crop"`` in the manifest's provenance. :func:`gallery` shows
them as thumbnails, one card per dataset; :func:`add_route` serves them from where they lie
(``/montage?study=KEY&name=FIELD.png``), only files of that listing, nothing copied.
"""

from __future__ import annotations

import mimetypes
import urllib.parse
from pathlib import Path

from dash import html

from ..data import StudyUnreadable
from . import common

GENERATOR = "cytotune crop"
MONTAGE_DIR = Path("crop", "montage")  # engine/crop/pipeline.py: CROP_DIR / "montage"
ROUTE = "/montage"
SHOWN = 8  # thumbnails per dataset; the card says how many there are


def montages(study) -> list[Path]:
    """The montage PNGs of ``study``'s dataset, by name; [] unless ``cytotune crop`` built it."""
    try:
        provenance = study.manifest().get("provenance") or {}
        dataset = study.dataset_path()
    except StudyUnreadable:
        return []
    if dataset is None or provenance.get("generator") != GENERATOR:
        return []
    folder = dataset / MONTAGE_DIR
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def url(study_key: str, name: str) -> str:
    """URL of one montage of a study's dataset (served by :func:`add_route`)."""
    return f"{ROUTE}?" + urllib.parse.urlencode({"study": study_key, "name": name})


def gallery(studies) -> list[html.Div]:
    """One card of montage thumbnails per crop-built dataset of ``studies`` (Study objects)."""
    by_dataset: dict[Path, tuple[list[str], list[Path]]] = {}
    for study in studies:
        found = montages(study)
        if found:
            keys, _ = by_dataset.setdefault(study.dataset_path().resolve(), ([], found))
            keys.append(study.key)
    cards = []
    for dataset, (keys, found) in by_dataset.items():
        thumbs = [
            html.A(
                html.Img(
                    src=url(keys[0], path.name),
                    alt=f"detections in {path.stem}",
                    title=path.stem,
                    className="montage",
                    style={"height": "180px", "border": "1px solid #e2e8f0", "borderRadius": "4px"},
                ),
                href=url(keys[0], path.name),
                target="_blank",
            )
            for path in found[:SHOWN]
        ]
        shown = f"{len(thumbs)} of {len(found)}" if len(found) > len(thumbs) else f"{len(found)}"
        cards.append(
            common.card(
                f"Detections: {dataset.name}",
                html.Div(thumbs, style={"display": "flex", "flexWrap": "wrap", "gap": "8px"}),
                sub=f"{shown} fields drawn by cytotune crop (green: cropped, red: quarantined); "
                f"{dataset}; studies {', '.join(keys)}",
            )
        )
    return cards


def add_route(app, ctx) -> None:
    """Serve ``/montage?study=KEY&name=NAME``: a montage listed by :func:`montages`, else 404."""
    from flask import abort, request, send_file

    @app.server.route(ROUTE)
    def montage_file():
        key = request.args.get("study")
        try:
            study = ctx.catalog.get(key) if key else None
        except StudyUnreadable:
            study = None
        if study is None:
            abort(404)
        name = request.args.get("name", "")
        path = next((p for p in montages(study) if p.name == name), None)
        if path is None:
            abort(404)
        kind = mimetypes.guess_type(path.name)[0] or "image/png"
        return send_file(path, mimetype=kind, max_age=60)
