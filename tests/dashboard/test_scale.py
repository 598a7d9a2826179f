"""A 10,000-trial store: the leaderboard loads, pages, sorts server-side, and the compare page
copes; a running search shows up live. How fast is measured by bench/leaderboard_browser.py
(a wall-clock budget on shared CI measures the neighbours, so no test asserts one)."""

from __future__ import annotations

import json
import time

import pytest
from cytotune.engine.search.recorder import StudyRecorder
from cytotune.engine.search.store import StudyStore

from .conftest import Server, wait_for
from .factory import make_study, make_trials_table

N = 10_000


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    study = root / "big"
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"status": "running", "dataset": "/nowhere"}))
    (study / "study.yaml").write_text(
        "name: big\ndataset: /nowhere\nobjectives:\n- {metric: f1_macro, mode: max}\n"
    )
    table = make_trials_table(study, N)
    srv = Server(study)
    yield srv, table
    srv.close()


def _texts(driver, css):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.trim())",
        css,
    )


def test_ten_thousand_trials_leaderboard_loads_pages_and_sorts(browser, big):
    srv, table = big
    best = table.sort_values("val/f1_macro", ascending=False).iloc[0]
    browser.get(srv.url + "/")  # opens on the leaderboard; server caches are cold
    wait_for(
        browser,
        lambda d: _texts(d, '#lb-table td[data-dash-column="trial"]')[:1] == [best["trial_id"]],
    )
    assert "of 10,000 trials" in browser.find_element("css selector", "#lb-count").text
    assert (
        len(_texts(browser, '#lb-table td[data-dash-column="trial"]')) == 25
    )  # one page reaches the browser
    browser.get(srv.url + "/leaderboard?study=big")
    wait_for(
        browser,
        lambda d: _texts(d, '#lb-table td[data-dash-column="trial"]')[:1] == [best["trial_id"]],
    )
    # sorting the whole table server-side
    browser.find_element(
        "css selector", '#lb-table th[data-dash-column="images_per_s"] .column-header--sort'
    ).click()
    slowest = table.sort_values("images_per_s")["trial_id"].iloc[0]
    wait_for(
        browser, lambda d: _texts(d, '#lb-table td[data-dash-column="trial"]')[:1] == [slowest]
    )
    # compare and trial pages cope with 10,000 trials and no per-fold table
    browser.get(srv.url + "/compare")
    wait_for(
        browser,
        lambda d: (
            d.find_elements("css selector", "#cmp-parcoords .parcoords")
            and d.find_elements("css selector", "#cmp-tests .notice")
        ),
    )
    assert "No per-fold results" in browser.find_element("css selector", "#cmp-tests").text
    browser.get(srv.url + "/leaderboard")
    wait_for(browser, lambda d: d.find_elements("css selector", "#lb-chart-button"))
    # the chart of all trials is drawn on request
    browser.find_element("css selector", "#lb-chart-button").click()
    wait_for(browser, lambda d: d.find_elements("css selector", "#lb-progress .main-svg"))


def test_running_search_appears_without_reload(browser, tmp_path):
    make_study(
        tmp_path,
        "live",
        n_trials=3,
        explain=False,
        status="running",
        dataset=tmp_path / "no-dataset",
    )
    srv = Server(tmp_path / "live")
    try:
        browser.get(srv.url + "/leaderboard")
        wait_for(browser, lambda d: len(_texts(d, '#lb-table td[data-dash-column="trial"]')) == 3)
        time.sleep(0.05)  # a new mtime for the rewritten table
        # the search's recorder starts a trial and rewrites the table (atomically)
        sample = {"family": "small_cnn", "small_cnn": {"filters": 8}, "train": {"lr": 1e-3}}
        StudyRecorder(StudyStore(str(tmp_path / "live")), k=3, max_epochs=4).started(
            "t99999", sample
        )
        wait_for(
            browser,
            lambda d: "t99999" in _texts(d, '#lb-table td[data-dash-column="trial"]'),
            timeout=10,
        )
        assert "running" in _texts(browser, '#lb-table td[data-dash-column="status"]')
    finally:
        srv.close()
