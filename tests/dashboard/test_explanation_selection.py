"""Explanation-aware selection in a real browser: leaderboard columns and filters, the compare
page's Pareto view and the trial page's sanity line (the alpha study's first explained trial
fails the sanity check with Grad-CAM, see factory.make_explain)."""

from __future__ import annotations

import pandas as pd

from .conftest import screenshot, wait_for
from .test_browser import _by, open_page


def _failing(studies_root) -> tuple[str, str]:
    quality = pd.read_parquet(studies_root / "alpha" / "explain" / "quality.parquet")
    verdicts = quality[quality["metric"] == "sanity_verdict"]
    bad = verdicts[verdicts["mean"] < 1]["trial_id"].iloc[0]
    good = verdicts[verdicts["trial_id"] != bad]["trial_id"].iloc[0]
    return str(bad), str(good)


def _trials(driver) -> list[str]:
    cells = driver.find_elements(*_by('#lb-table td[data-dash-column="trial"]'))
    return [c.text.strip() for c in cells]


def test_leaderboard_explanation_columns_and_filters(browser, server, studies_root):
    bad, good = _failing(studies_root)
    open_page(browser, server, "/leaderboard?study=alpha", '#lb-table td[data-dash-column="trial"]')
    headers = browser.find_element(*_by("#lb-table")).text
    for name in ("sanity passed", "deletion AUC", "insertion AUC", "in cell", "explanation score"):
        assert name in headers
    assert len(_trials(browser)) > 2
    browser.find_element(*_by("#lb-explained input[value='explained']")).click()
    wait_for(browser, lambda d: sorted(_trials(d)) == sorted([bad, good]))
    browser.find_element(*_by("#lb-explained input[value='sane']")).click()
    wait_for(browser, lambda d: _trials(d) == [good])
    sanity = browser.find_element(*_by('#lb-table td[data-dash-column="explain_sanity"]'))
    assert sanity.text.strip() == "1"
    screenshot(browser, "leaderboard_explained")


def test_compare_pareto_view(browser, server, studies_root):
    bad, good = _failing(studies_root)
    open_page(browser, server, "/compare?study=alpha", "#cmp-pareto .scatterlayer .point")
    names = (
        "const g = document.getElementById('cmp-pareto').querySelector('.js-plotly-plot');"
        "return g && g.data ? g.data.map(t => t.name) : []"
    )
    wanted = ["every method passed", "a method did not pass", "Pareto front"]
    wait_for(browser, lambda d: d.execute_script(names) == wanted)
    titles = browser.execute_script(
        "const l = document.getElementById('cmp-pareto').querySelector('.js-plotly-plot').layout;"
        "return [l.xaxis.title.text, l.yaxis.title.text]"
    )
    assert titles == ["balanced_accuracy (fold mean)", "explanation score"]
    wait_for(
        browser, lambda d: "passed the sanity" in d.find_element(*_by("#cmp-pareto-note")).text
    )
    screenshot(browser, "compare_pareto")


def test_trial_page_says_which_method_failed(browser, server, studies_root):
    bad, good = _failing(studies_root)
    open_page(browser, server, f"/trial/{bad}?study=alpha", "#trial-sanity .notice")
    line = browser.find_element(*_by("#trial-sanity")).text
    assert "passed: saliency" in line
    assert "gradcam: failed (rho 0.81 [0.75, 0.87] >= 0.66)" in line
    assert "not the model's evidence" in line
    screenshot(browser, "trial_sanity")
    open_page(browser, server, f"/trial/{good}?study=alpha", "#trial-sanity .notice")
    assert "failed" not in browser.find_element(*_by("#trial-sanity")).text
