"""Leaderboard, Compare and Studies say what they show: an empty filter result in words, trials
numbered from 1, key parameters in full, 3-digit axis labels, families compared at the same
fidelity without duplicate rows, the dataset's path."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from cytotune.dashboard.data import Catalog
from cytotune.dashboard.pages import compare, leaderboard, studies

from .conftest import screenshot, wait_for
from .test_browser import _by, _choose, cells, open_page, texts


@pytest.fixture(scope="module")
def alpha(studies_root):
    return Catalog(str(studies_root)).get("alpha")


# ------------------------------------------------------------------------------ without a browser
def test_a_filter_that_matches_nothing_says_so(alpha):
    rows, pages, count, error = leaderboard.rows_for(alpha, filter_query="{family} icontains zzz")
    assert rows == []
    assert pages == 1
    assert error is None
    assert count == "no trials match the filter (12 in the study)"


def test_progress_chart_numbers_trials_from_one(alpha):
    figure = leaderboard.progress_figure(alpha.trials(), *alpha.objective())
    numbers = sorted(x for trace in figure["data"][:-1] for x in trace["x"])
    assert numbers == list(range(1, 13))
    assert figure["data"][-1]["x"][0] == 1  # the best-so-far line too


def test_parallel_coordinates_label_numbers_with_three_significant_digits(alpha):
    figure = compare.parcoords_figure(alpha.trials(), "balanced_accuracy", "backbone")
    dims = figure.data[0].dimensions
    numeric = [d for d in dims if d.tickvals is None]
    assert numeric
    assert all(d.tickformat == ".3~g" for d in numeric)


def _trials(rows):
    columns = ["trial_id", "family", "status", "epochs_done", "folds_done", "val/balanced_accuracy"]
    return pd.DataFrame(rows, columns=columns)


def test_family_best_is_chosen_among_fully_trained_trials_only():
    trials = _trials(
        [
            ("a1", "cnn", "completed", 4, 3, 0.80),
            ("a2", "cnn", "pruned", 1, 3, 0.95),  # one epoch: a lower fidelity
            ("b1", "resnet", "completed", 4, 3, 0.70),
            ("b2", "resnet", "pruned", 4, 1, 0.99),  # raced out after one fold of three
            ("c1", "attention", "pruned", 1, 3, 0.90),  # never fully trained
        ]
    )
    full = compare.full_fidelity(trials, max_epochs=4, k=3)
    assert full.tolist() == [True, False, True, False, False]
    assert compare.family_best(trials[full], "balanced_accuracy", "max") == {
        "cnn": "a1",
        "resnet": "b1",
    }
    note = compare.fidelity_note(trials, full, 4, 3, ["attention"])
    assert "2 of 5 trials trained to 4 epochs on all 3 folds" in note
    assert "Left out (no trial trained that far): attention" in note


def test_without_folds_done_the_epochs_decide():
    trials = _trials(
        [("a", "cnn", "completed", 4, None, 0.8), ("b", "cnn", "pruned", 1, None, 0.9)]
    )
    trials = trials.drop(columns="folds_done")
    assert compare.full_fidelity(trials, None, 3).tolist() == [True, False]


def test_picking_a_pair_already_shown_adds_no_row():
    best = {"cnn": "a1", "resnet": "b1", "attention": "c1"}
    scores = {t: {0: 0.5, 1: 0.6, 2: 0.7} for t in ("a1", "b1", "c1", "x9")}
    named, pairs = compare.pairs_to_test(best, scores, "b1", "a1")
    assert len(pairs) == 3
    assert not any(name.startswith("trial ") for name in named)
    named, pairs = compare.pairs_to_test(best, scores, "x9", "a1")
    assert len(pairs) == 4
    assert pairs[0] == ("trial x9", "trial a1")


def test_studies_rows_carry_the_full_dataset_path(alpha, studies_root):
    assert alpha.summary()["dataset"] == str(studies_root / "dataset")
    path = "/very/long/path/to/a/project/with/many/levels/datasets/mitocheck"
    short = studies.left_ellipsis(path)
    assert short.startswith("…")
    assert short.endswith("/datasets/mitocheck")
    assert len(short) == studies.DATASET_CHARS
    assert studies.left_ellipsis("/data/x") == "/data/x"


# ------------------------------------------------------------------------------ in chromium
@pytest.mark.usefixtures("browser")
def test_leaderboard_empty_filter_and_wrapped_key_parameters(browser, server, alpha):
    from selenium.webdriver.common.keys import Keys

    open_page(
        browser, server, "/leaderboard?study=alpha", '#lb-table td[data-dash-column="params"]'
    )
    wait_for(browser, lambda d: len(cells(d, "trial")) == 12)
    # every key-parameters cell shows its whole text: wrapped, nothing hidden past its edge
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#lb-table td[data-dash-column=\"params\"]'))"
        ".map(td => [td.innerText.trim().replaceAll('\\u2011', '-'),"
        " td.scrollWidth <= td.clientWidth + 1])"
    )
    expected = set(alpha.trials()["key_params"])
    assert all(fits for _, fits in shown)
    assert {text for text, _ in shown} <= expected
    screenshot(browser, "leaderboard_wrapped", height=900)
    box = browser.find_element(*_by('#lb-table th.dash-filter[data-dash-column="family"] input'))
    box.send_keys("zzz", Keys.ENTER)
    wait_for(browser, lambda d: "no trials match" in d.find_element(*_by("#lb-count")).text)
    assert browser.find_element(*_by("#lb-count")).text == (
        "no trials match the filter (12 in the study)"
    )
    assert "--1" not in browser.find_element(*_by("body")).text


@pytest.mark.usefixtures("browser")
def test_compare_axis_labels_and_a_repeated_pair(browser, server, alpha):
    open_page(browser, server, "/compare?study=alpha", '#cmp-table td[data-dash-column="A"]')
    wait_for(browser, lambda d: d.find_elements(*_by("#cmp-parcoords .axis-extent-top-text")))
    ends = browser.execute_script(  # SVG text: textContent (innerText is HTML only)
        "return Array.from(document.querySelectorAll('#cmp-parcoords .axis-extent-top-text,"
        " #cmp-parcoords .axis-extent-bottom-text')).map(e => e.textContent.trim())"
    )
    mantissas = [re.split("e", e)[0] for e in ends if e]  # "−2.02", "0.873", "64", "1.2e−3"
    digits = [len(re.sub(r"\D", "", m).lstrip("0")) for m in mantissas]
    assert digits, ends
    assert max(digits) <= 3, ends
    assert (
        "9 of 12 trials trained to 4 epochs"
        in browser.find_element(*_by("#cmp-families-note")).text
    )
    rows_before = texts(browser, '#cmp-table td[data-dash-column="A"]')
    trials = alpha.trials()
    best = compare.family_best(trials[trials.status == "completed"], "balanced_accuracy", "max")
    first, second = sorted(best.values())[:2]
    _choose(browser, "cmp-a", first)
    _choose(browser, "cmp-b", second)
    column = '#cmp-table td[data-dash-column="A"]'
    # the table is re-drawn after the choice: wait until it is drawn with text again
    wait_for(browser, lambda d: all(texts(d, column)) and texts(d, column))
    assert texts(browser, column) == rows_before
    screenshot(browser, "compare_repeated_pair")


@pytest.mark.usefixtures("browser")
def test_studies_page_shows_the_dataset_path_with_the_full_path_on_hover(
    browser, server, studies_root
):
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(browser, server, "/studies", '#studies-table td[data-dash-column="dataset"]')
    full = str(studies_root / "dataset")
    shown = texts(browser, '#studies-table td[data-dash-column="dataset"]')
    assert studies.left_ellipsis(full) in shown
    cell = next(
        e
        for e in browser.find_elements(*_by('#studies-table td[data-dash-column="dataset"]'))
        if e.text.strip() == studies.left_ellipsis(full)
    )
    ActionChains(browser).move_to_element(cell).perform()
    wait_for(browser, lambda d: full in " ".join(texts(d, ".dash-tooltip")))
