"""Safety and the read side without a browser: auth, file confinement, query, malformed studies."""

from __future__ import annotations

import argparse
import io
import os

import pandas as pd
import pytest
from cytotune.dashboard import command, query
from cytotune.dashboard.app import create_app
from cytotune.dashboard.data import Catalog, Study, StudyUnreadable, find_studies, key_params
from PIL import Image

from .factory import make_trials_table

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def client(studies_root):
    return create_app(str(studies_root)).server.test_client()


@pytest.fixture(scope="module")
def guarded(studies_root):
    return create_app(str(studies_root), token=TOKEN).server.test_client()


def test_default_bind_is_localhost_and_auth_is_optional():
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--study", "runs/studies"])
    assert args.host == "127.0.0.1"
    assert args.port == 8050
    assert parser.parse_args(["--study", "x", "--auth", "t"]).auth == "t"


def test_cli_lists_the_dashboard():
    from cytotune.engine.cli import SUBCOMMANDS

    assert SUBCOMMANDS["dashboard"][0] == "cytotune.dashboard.command"


def test_token_required_on_every_route(guarded):
    for path in (
        "/",
        "/leaderboard",
        "/_dash-layout",
        "/_dash-dependencies",
        "/files?study=alpha&path=study.json",
    ):
        response = guarded.get(path)
        assert response.status_code == 401, path
        assert TOKEN not in response.get_data(as_text=True)
    assert guarded.post("/_dash-update-component", json={}).status_code == 401
    assert guarded.get("/?token=wrong").status_code == 401


def test_token_query_then_cookie_or_bearer_header(guarded, studies_root):
    first = guarded.get(f"/leaderboard?token={TOKEN}")
    assert first.status_code == 200
    assert "cytotune_token" in first.headers.get("Set-Cookie", "")
    assert "HttpOnly" in first.headers["Set-Cookie"]
    # the cookie now carries the token: no query string needed
    assert guarded.get("/_dash-layout").status_code == 200
    fresh = create_app(str(studies_root), token=TOKEN).server.test_client()
    assert fresh.get("/_dash-layout").status_code == 401
    assert (
        fresh.get("/_dash-layout", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    )


def test_files_are_served_from_inside_the_study_only(client, studies_root, tmp_path):
    ok = client.get("/files?study=alpha&path=study.json")
    assert ok.status_code == 200
    assert b'"status"' in ok.data
    secret = studies_root / "secret.txt"
    secret.write_text("not yours")
    for bad in (
        "../secret.txt",
        "../../etc/passwd",
        "/etc/passwd",
        "explain/../../secret.txt",
        "%2e%2e/secret.txt",
        "..\\secret.txt",
    ):
        response = client.get("/files", query_string={"study": "alpha", "path": bad})
        assert response.status_code in (403, 404), bad
        assert b"not yours" not in response.data
        assert b"root:" not in response.data
    assert (
        client.get("/files", query_string={"study": "alpha", "path": "../secret.txt"}).status_code
        == 403
    )
    # a symlink inside the study that points outside it is refused too
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    link = studies_root / "alpha" / "link.txt"
    if not link.exists():
        os.symlink(outside, link)
    assert client.get("/files?study=alpha&path=link.txt").status_code == 403
    assert client.get("/files?study=nope&path=study.json").status_code == 404


def test_catalog_file_refuses_traversal_directly(studies_root):
    catalog = Catalog(studies_root)
    assert catalog.file("alpha", "study.yaml").name == "study.yaml"
    for bad in ("../beta/study.json", "/etc/passwd", "a/../../beta/study.json", "x\x00y"):
        with pytest.raises(PermissionError):
            catalog.file("alpha", bad)


def test_overlay_render_route(client, studies_root):
    maps = pd.read_parquet(
        next((studies_root / "alpha" / "explain" / "maps").glob("*/gradcam.parquet"))
    )
    row = maps.iloc[0]
    base = {"study": "alpha", "trial": row["trial_id"], "method": "gradcam", "cell": row["cell_id"]}
    side = client.get("/render/overlay.png", query_string=base)
    viridis = client.get("/render/overlay.png", query_string={**base, "cmap": "viridis"})
    blend = {**base, "mode": "blend"}
    plain = client.get("/render/overlay.png", query_string={**blend, "alpha": "0"})
    strong = client.get("/render/overlay.png", query_string={**blend, "alpha": "1"})
    assert plain.status_code == strong.status_code == side.status_code == 200
    assert plain.mimetype == "image/png"
    # crop | map | colour bar at 3 screen px per crop px (24 px crops), or one panel + bar
    assert Image.open(io.BytesIO(side.data)).size == (2 * 72 + 4 + 84, 72)
    assert Image.open(io.BytesIO(plain.data)).size == (72 + 84, 72)
    assert plain.data != strong.data
    assert side.data != viridis.data
    contour = client.get("/render/overlay.png", query_string={**base, "mode": "contour"})
    smooth = client.get("/render/overlay.png", query_string={**blend, "alpha": "1", "smooth": "1"})
    assert contour.data != plain.data
    assert smooth.data != strong.data
    one = client.get("/render/overlay.png", query_string={**blend, "alpha": "0", "channels": "0"})
    assert one.data != plain.data  # a single channel differs from the composite
    for bad in ({"cmap": "nope"}, {"mode": "nope"}, {"pct": "10"}, {"smooth": "9"}):
        assert client.get("/render/overlay.png", query_string={**base, **bad}).status_code == 400
    assert (
        client.get("/render/overlay.png", query_string={**base, "cell": "missing"}).status_code
        == 404
    )


def test_find_studies_and_malformed_directories(studies_root, tmp_path):
    found = find_studies(studies_root)
    assert sorted(found) == ["alpha", "beta", "broken"]
    assert list(find_studies(studies_root / "alpha")) == ["alpha"]
    broken = Study("broken", studies_root / "broken")
    with pytest.raises(StudyUnreadable, match="study.json"):
        broken.status()
    summary = broken.summary()
    assert summary["status"] == "unreadable"
    assert "study.json" in summary["error"]
    half = tmp_path / "half"
    half.mkdir()
    (half / "study.json").write_text('{"status": "running"}')
    (half / "trials.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(StudyUnreadable, match="cannot be read as Parquet"):
        Study("half", half).trials()
    with pytest.raises(StudyUnreadable, match="no study 'missing-study'"):
        Catalog(tmp_path).get("missing-study")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StudyUnreadable, match="no cytotune study"):
        Catalog(empty).get(None)


def test_broken_study_page_is_a_message_not_a_traceback(client):
    import json

    payload = {
        "output": "..page.children...nav.children...study-chip.children..",
        "outputs": [
            {"id": "page", "property": "children"},
            {"id": "nav", "property": "children"},
            {"id": "study-chip", "property": "children"},
        ],
        "inputs": [
            {"id": "url", "property": "pathname", "value": "/leaderboard"},
            {"id": "url", "property": "search", "value": "?study=broken"},
        ],
        "changedPropIds": ["url.pathname"],
    }
    response = client.post("/_dash-update-component", json=payload)
    assert response.status_code == 200
    page = response.get_json()["response"]["page"]["children"]["props"]
    assert page["className"] == "notice error"
    assert "broken" in page["children"]
    assert "study.json" in page["children"] or "Parquet" in page["children"]
    assert "Traceback" not in json.dumps(page)


def test_filter_parsing_and_application():
    parts = query.parse_filter(
        '{family} icontains Res && {auc_macro} > 0.9 && {status} s= "completed"'
    )
    assert parts == [
        ("family", "icontains", "Res"),
        ("auc_macro", "i>", 0.9),
        ("status", "=", "completed"),
    ]
    frame = pd.DataFrame(
        {
            "family": ["resnet", "small_cnn", "ResNet"],
            "val/auc_macro": [0.95, 0.99, 0.5],
            "status": ["completed"] * 3,
        }
    )
    columns = {"family": "family", "auc_macro": "val/auc_macro", "status": "status"}
    assert query.apply_filter(frame, parts, columns)["family"].tolist() == ["resnet"]
    assert len(query.apply_filter(frame, query.parse_filter("{auc_macro} <= 0.95"), columns)) == 2
    with pytest.raises(ValueError, match="unknown column"):
        query.apply_filter(frame, query.parse_filter("{nope} > 1"), columns)
    with pytest.raises(ValueError, match="cannot read"):
        query.parse_filter("family is great")


def test_sort_and_page_on_ten_thousand_trials(tmp_path):
    table = make_trials_table(tmp_path, 10_000)
    columns = {"f1_macro": "val/f1_macro", "trial": "trial_id"}
    ranked = query.apply_sort(
        table, [{"column_id": "f1_macro", "direction": "desc"}], columns, ("val/f1_macro", False)
    )
    page, pages = query.page(ranked, 3, 25)
    assert pages == 400
    assert len(page) == 25
    assert page["val/f1_macro"].tolist() == sorted(table["val/f1_macro"], reverse=True)[75:100]


def test_key_params_and_mean_std():
    assert (
        key_params(
            '{"family": "backbone", "backbone": {"backbone": "resnet18", "dropout": 0.25}, "train": {"lr": 0.003}}'
        )
        == "resnet18 dropout=0.25 lr=3.0e-03"
    )
    assert key_params("not json") == ""
    assert query.mean_std(0.91234, 0.0123) == "0.9123 ± 0.0123"
    assert query.mean_std(float("nan"), 0.1) == "-"
