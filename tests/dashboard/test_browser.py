"""The dashboard in a real headless chromium: every page on a generated study, with screenshots."""

from __future__ import annotations

import os
import time
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
from cytotune.engine.search.store import StudyStore

from .conftest import screenshot, wait_for

pytestmark = pytest.mark.usefixtures("browser")


def _by(css):
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def texts(driver, css: str) -> list[str]:
    """innerText of every match, read in one script (no stale elements while Dash re-renders)."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText.trim())"
    )
    return driver.execute_script(script, css)


def cells(driver, column: str) -> list[str]:
    return texts(driver, f'#lb-table td[data-dash-column="{column}"]')


def open_page(driver, server, path: str, ready_css: str):
    driver.get(server.url + path)
    wait_for(driver, lambda d: d.find_elements(*_by(ready_css)))


def test_leaderboard_shows_every_trial_ranked(browser, server, studies_root):
    open_page(browser, server, "/leaderboard?study=alpha", '#lb-table td[data-dash-column="trial"]')
    trials = StudyStore(str(studies_root / "alpha")).table("trials")
    best = trials.sort_values("val/balanced_accuracy", ascending=False).iloc[0]
    wait_for(browser, lambda d: len(cells(d, "trial")) == len(trials))
    assert cells(browser, "trial")[0] == best["trial_id"]
    assert cells(browser, "rank")[:3] == ["1", "2", "3"]
    shown = cells(browser, "balanced_accuracy")[0]
    assert shown == f"{best['val/balanced_accuracy']:.4f} ± {best['val/balanced_accuracy_std']:.4f}"
    assert "12" in browser.find_element(*_by("#kpi-trials")).text
    screenshot(browser, "leaderboard")


def test_leaderboard_sort_filter_and_hide_pruned(browser, server, studies_root):
    from selenium.webdriver.common.keys import Keys

    trials = StudyStore(str(studies_root / "alpha")).table("trials")
    open_page(browser, server, "/leaderboard?study=alpha", '#lb-table td[data-dash-column="trial"]')
    wait_for(browser, lambda d: len(cells(d, "trial")) == len(trials))
    # sort by log loss, ascending (one click on the header's sort arrow)
    browser.find_element(
        *_by('#lb-table th[data-dash-column="log_loss"] .column-header--sort')
    ).click()
    expected = trials.sort_values("val/log_loss")["trial_id"].tolist()
    wait_for(browser, lambda d: cells(d, "trial") == expected)
    # filter families by typing into the family column's filter cell
    box = browser.find_element(*_by('#lb-table th.dash-filter[data-dash-column="family"] input'))
    box.send_keys("backbone", Keys.ENTER)
    wait_for(browser, lambda d: set(cells(d, "family")) == {"backbone"})
    assert cells(browser, "trial") == [
        t for t in expected if t in set(trials[trials.family == "backbone"].trial_id)
    ]
    # a numeric filter on the objective
    box = browser.find_element(
        *_by('#lb-table th.dash-filter[data-dash-column="balanced_accuracy"] input')
    )
    box.send_keys("> 0.6", Keys.ENTER)
    keep = trials[(trials.family == "backbone") & (trials["val/balanced_accuracy"] > 0.6)]
    wait_for(browser, lambda d: len(cells(d, "trial")) == len(keep))
    assert "filtered from 12" in browser.find_element(*_by("#lb-count")).text
    # hide pruned
    browser.find_element(*_by("#lb-hide-pruned input")).click()
    wait_for(browser, lambda d: "pruned" not in cells(d, "status"))
    assert len(cells(browser, "trial")) == int((keep.status != "pruned").sum())


def test_trial_page(browser, server, studies_root):
    trials = StudyStore(str(studies_root / "alpha")).table("trials")
    best = trials.sort_values("val/balanced_accuracy", ascending=False).iloc[0]
    open_page(
        browser, server, "/leaderboard?study=alpha", '#lb-table td[data-dash-column="trial"] a'
    )
    browser.find_element(*_by('#lb-table td[data-dash-column="trial"] a')).click()
    wait_for(browser, lambda d: d.find_elements(*_by("#pull-command")))
    study = (studies_root / "alpha").resolve()
    command = browser.find_element(*_by("#pull-command")).text
    assert (
        command
        == f"cytotune pull --study {study} --trial {best['trial_id']} --out bundles/{best['trial_id']}"
    )
    assert f"Trial {best['trial_id']}" in browser.find_element(*_by("#trial-title")).text
    wait_for(browser, lambda d: len(d.find_elements(*_by(".js-plotly-plot"))) >= 4)
    folds = browser.find_elements(*_by('#fold-table td[data-dash-column="fold"]'))
    assert [f.text for f in folds] == ["0", "1", "2"]
    assert f"family: {best['family']}" in browser.find_element(*_by("#trial-config")).text
    assert browser.find_elements(*_by("#trial-explanations"))  # the best trial was explained
    # the confusion matrix and the ROC legend are drawn
    wait_for(
        browser,
        lambda d: (
            "AUC" in d.find_element(*_by("body")).text
            and "predicted" in d.find_element(*_by("body")).text
        ),
    )
    time.sleep(0.5)
    screenshot(browser, "trial")


def test_compare_page_paired_tests(browser, server):
    open_page(browser, server, "/compare?study=alpha", '#cmp-table td[data-dash-column="A"]')
    rows = browser.find_elements(*_by('#cmp-table td[data-dash-column="A"]'))
    assert len(rows) == 3  # three families, three pairs
    p_values = [
        float(e.text.lstrip("<"))
        for e in browser.find_elements(*_by('#cmp-table td[data-dash-column="p Holm"]'))
    ]
    assert all(0 <= p <= 1 for p in p_values)
    flags = texts(browser, '#cmp-table td[data-dash-column="NB Holm < 0.05"]')
    assert flags == ["yes" if p < 0.05 else "no" for p in p_values]
    wait_for(browser, lambda d: d.find_elements(*_by("#cmp-parcoords .parcoords")))
    # any two trials: their row joins the table, first
    _choose(browser, "cmp-a", "t00008")
    _choose(browser, "cmp-b", "t00005")
    wait_for(
        browser, lambda d: texts(d, '#cmp-table td[data-dash-column="A"]')[:1] == ["trial t00008"]
    )
    assert texts(browser, '#cmp-table td[data-dash-column="B"]')[0] == "trial t00005"
    assert len(texts(browser, '#cmp-table td[data-dash-column="A"]')) == 4
    assert browser.find_elements(*_by("#cmp-importance .bars, #cmp-importance .trace.bars"))
    time.sleep(0.5)
    screenshot(browser, "compare")


def test_studies_page_lists_every_study(browser, server):
    open_page(browser, server, "/studies", '#studies-table td[data-dash-column="study"]')
    names = [
        e.text for e in browser.find_elements(*_by('#studies-table td[data-dash-column="study"]'))
    ]
    assert sorted(names) == ["alpha", "beta", "broken"]
    body = browser.find_element(*_by("#studies-table")).text
    assert "unreadable" in body
    assert "running" in body
    assert "finished" in body
    assert "Traceback" not in browser.page_source
    screenshot(browser, "studies")


def _tiles(driver):
    return driver.find_elements(*_by("#ex-grid .tile img"))


def _choose(driver, dropdown_id: str, label: str):
    """Pick ``label`` in a dcc.Dropdown (open it, click the option)."""
    css = f'.dash-dropdown-options [role=option] input[value="{label}"]'

    def opened(d):
        from selenium.common.exceptions import ElementNotInteractableException

        if not d.find_elements(*_by(css)):
            try:
                d.find_element(*_by(f"#{dropdown_id}")).click()
            except ElementNotInteractableException:  # re-drawn by a callback just now
                return []
        return d.find_elements(*_by(css))

    option = wait_for(driver, opened)
    driver.execute_script("arguments[0].closest('[role=option]').click()", option[0])


def test_explanations_switch_method_alpha_and_filter(browser, server, studies_root):
    open_page(browser, server, "/explanations?study=alpha", "#ex-grid .tile img")
    tiles = _tiles(browser)
    assert len(tiles) == 24  # first page of 40 cells
    src = urllib.parse.parse_qs(urllib.parse.urlparse(tiles[0].get_attribute("src")).query)
    # Grad-CAM failed the sanity check on this trial: hidden, saliency comes first
    assert src["method"] == ["saliency"]
    assert src["alpha"] == ["0.60"]
    assert src["mode"] == ["side"]
    assert not browser.find_elements(*_by("#ex-sanity-warning .notice"))
    # the overlay images really load (naturalWidth > 0 once the PNG decoded)
    wait_for(
        browser,
        lambda d: (
            d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", _tiles(d)[0]
            )
            > 0
        ),
    )
    screenshot(browser, "explanations")
    gradcam = wait_for(
        browser, lambda d: d.find_elements(*_by("#ex-sanity li[data-method='gradcam']"))
    )
    assert gradcam[0].get_attribute("data-verdict") == "failed"
    occlusion = browser.find_element(*_by("#ex-sanity li[data-method='occlusion']"))
    assert "out of memory" in occlusion.text
    # one click shows the failing method, labelled, and choosing it shows the warning
    browser.find_element(*_by("#ex-show-failing input")).click()
    _choose(browser, "ex-method", "gradcam")
    wait_for(browser, lambda d: "method=gradcam" in _tiles(d)[0].get_attribute("src"))
    warning = wait_for(
        browser,
        lambda d: (
            "failed (rho" in d.find_element(*_by("#ex-sanity-warning")).text
            and d.find_element(*_by("#ex-sanity-warning")).text
        ),
    )
    assert "failed (rho 0.81 [0.75, 0.87] >= 0.66)" in warning
    assert "do not read them as explanations" in warning
    wait_for(browser, lambda d: "blocks.1 (6x6 map)" in d.find_element(*_by("#ex-layer")).text)
    command = browser.find_element(*_by("#ex-layer-command")).text
    assert command.endswith("--methods gradcam:layer=blocks.0")  # the other usable layer
    screenshot(browser, "explanations_failing")
    # switch method
    _choose(browser, "ex-method", "saliency")
    wait_for(browser, lambda d: "method=saliency" in _tiles(d)[0].get_attribute("src"))
    # alpha: move the slider's thumb to the end with the keyboard, as a person could
    from selenium.webdriver.common.keys import Keys

    browser.find_element(*_by("#ex-mode input[value='blend']")).click()
    wait_for(browser, lambda d: "mode=blend" in _tiles(d)[0].get_attribute("src"))
    browser.find_element(*_by("#ex-alpha [role=slider]")).send_keys(Keys.END)
    wait_for(browser, lambda d: "alpha=1.00" in _tiles(d)[0].get_attribute("src"))
    # colormap and channels go to the overlay renderer
    _choose(browser, "ex-cmap", "viridis")
    wait_for(browser, lambda d: "cmap=viridis" in _tiles(d)[0].get_attribute("src"))
    browser.find_element(*_by("#ex-channels input[value='1']")).click()
    wait_for(browser, lambda d: "channels=0%2C2" in _tiles(d)[0].get_attribute("src"))
    # outcome filter: only wrong predictions
    browser.find_element(*_by("#ex-outcome input[value='wrong']")).click()
    wait_for(
        browser,
        lambda d: all(
            t.get_attribute("data-correct") == "False"
            for t in d.find_elements(*_by("#ex-grid .tile"))
        ),
    )
    maps = pd.read_parquet(
        studies_root / "alpha" / "explain" / "maps" / src["trial"][0] / "saliency.parquet",
        columns=["correct"],
    )
    wrong = int((~maps["correct"]).sum())
    wait_for(browser, lambda d: len(_tiles(d)) == min(24, wrong))
    assert f"{wrong} of 40" in browser.find_element(*_by("#ex-count")).text
    # population maps, prototypes and attention of the top trial are shown
    graphs = browser.find_elements(*_by("#ex-population .js-plotly-plot"))
    assert len(graphs) >= 2  # crop | map and the correlation panels, per class
    titles = browser.find_element(*_by("#ex-population")).text
    assert "geometric-mean crop" in titles
    assert "r>0.5: 70%" in titles
    screenshot(browser, "explanations_population")
    assert browser.find_elements(*_by("#ex-prototypes img"))
    assert browser.find_elements(*_by("#ex-attention img"))


def test_explanations_pagination(browser, server):
    open_page(browser, server, "/explanations?study=alpha", "#ex-grid .tile img")
    first = {t.get_attribute("title") for t in _tiles(browser)}
    browser.find_element(*_by("#ex-next")).click()
    wait_for(browser, lambda d: "page 2 of 2" in d.find_element(*_by("#ex-page-label")).text)
    second = {t.get_attribute("title") for t in _tiles(browser)}
    assert len(second) == 16
    assert not first & second


def test_study_without_explanations_says_how_to_make_them(browser, server):
    open_page(browser, server, "/explanations?study=beta", ".notice")
    assert "cytotune explain --study" in browser.find_element(*_by(".notice")).text


def test_broken_study_shows_a_message_not_a_traceback(browser, server):
    open_page(browser, server, "/leaderboard?study=broken", ".notice.error")
    text = browser.find_element(*_by(".notice.error")).text
    assert "study.json" in text or "Parquet" in text
    assert "Traceback" not in browser.page_source


def test_pages_never_write_the_study(browser, server, studies_root):
    def listing():
        return {
            p.relative_to(studies_root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(studies_root.rglob("*"))
            if p.is_file()
        }

    before = listing()
    for path in (
        "/leaderboard?study=alpha",
        "/compare?study=alpha",
        "/explanations?study=alpha",
        "/trial/t00008?study=alpha",
        "/studies",
    ):
        browser.get(server.url + path)
        wait_for(browser, lambda d: d.find_elements(*_by("#page > *")))
        time.sleep(0.5)
    assert listing() == before


@pytest.mark.skipif(
    not os.environ.get("CYTOTUNE_DEMO_STUDY"),
    reason="set CYTOTUNE_DEMO_STUDY to a real study (cytotune demo + cytotune explain) for its screenshots",
)
def test_screenshots_of_a_real_study(browser):
    from .conftest import Server

    study = Path(os.environ["CYTOTUNE_DEMO_STUDY"])
    srv = Server(study)
    try:
        trials = StudyStore(str(study)).table("trials")
        best = trials.sort_values("val/balanced_accuracy", ascending=False)["trial_id"].iloc[0]
        for name, path, ready in (
            ("leaderboard", "/", '#lb-table td[data-dash-column="trial"]'),
            ("trial", f"/trial/{best}", "#fold-table"),
            ("compare", "/compare", "#cmp-table"),
            ("explanations", "/explanations", "#ex-grid .tile img"),
        ):
            open_page(browser, srv, path, ready)
            time.sleep(1.5)
            screenshot(browser, f"demo_{name}")
    finally:
        srv.close()


def test_regression_study_without_its_dataset(browser, tmp_path):
    from .conftest import Server
    from .factory import make_regression_study

    study = make_regression_study(tmp_path)
    srv = Server(study)
    try:
        open_page(browser, srv, "/leaderboard", '#lb-table td[data-dash-column="trial"]')
        assert "r2/tumour" in browser.find_element(*_by("#lb-table")).text
        open_page(browser, srv, "/trial/r0000", "#fold-table")
        assert "No ROC curves" in browser.find_element(*_by("#page")).text
        open_page(browser, srv, "/compare", "#cmp-parcoords")
        open_page(browser, srv, "/explanations", "#ex-grid .tile img")
        page = browser.find_element(*_by("#page")).text
        assert "not reachable" in page
        assert "ABSOLUTE ERROR" in page.upper()
        assert "error" in texts(browser, "#ex-grid .tile .cap")[0]
        # the maps are drawn alone (no crop): the PNG really decodes
        wait_for(
            browser,
            lambda d: (
                d.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth", _tiles(d)[0]
                )
                == 16 * 5 + 84  # the map alone, enlarged to >= 72 px, and its colour bar
            ),
        )
        assert not browser.find_element(*_by("#ex-true")).is_displayed()  # no classes to filter by
        # the error slider runs over the real absolute errors: drag its upper end down to half
        maps = pd.read_parquet(
            study / "explain" / "maps" / "r0000" / "gradcam.parquet", columns=["abs_error"]
        )
        top = float(
            browser.find_element(
                *_by("#ex-range [role=slider]:last-of-type, #ex-range .dash-slider-thumb-2")
            ).get_attribute("aria-valuemax")
        )
        assert top == pytest.approx(maps["abs_error"].max(), rel=1e-3)
        from selenium.webdriver.common.keys import Keys

        thumb = browser.find_element(*_by("#ex-range .dash-slider-thumb-2"))
        thumb.send_keys(*[Keys.ARROW_LEFT] * 25)  # 25 steps of top/50
        limit = float(thumb.get_attribute("aria-valuenow"))
        keep = int((maps["abs_error"] <= limit + 1e-9).sum())
        wait_for(browser, lambda d: len(_tiles(d)) == keep)
        assert 0 < keep < len(maps)
        assert not browser.find_elements(*_by(".notice.error"))
    finally:
        srv.close()
