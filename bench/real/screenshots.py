"""Screenshots of the dashboard on one study, in headless chromium (Debian's chromium and
chromium-driver), for docs/results.md.

Serves ``cytotune dashboard`` for the study on a free 127.0.0.1 port in this process, opens the
leaderboard, the best trial, the compare page and the explanations page, waits for each page's
content and saves ``OUT/<prefix>_<page>.png``.

    python bench/real/screenshots.py runs/real-cpu/mitocheck --out docs/results --prefix mitocheck
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import pandas as pd

PAGES = (
    ("leaderboard", "/", '#lb-table td[data-dash-column="trial"]'),
    ("trial", "/trial/{best}", "#fold-table"),
    ("compare", "/compare", "#cmp-table"),
    ("explanations", "/explanations", "#ex-grid .tile img"),
)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/ is not installed
    from cytotune.dashboard.app import create_app
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    from tests.dashboard.browser import headless_chromium

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--metric", default="f1_weighted")
    args = parser.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    httpd = make_server("127.0.0.1", 0, create_app(str(args.study)).server, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}"
    trials = pd.read_parquet(args.study / "trials.parquet")
    best = trials.sort_values(f"val/{args.metric}", ascending=False)["trial_id"].iloc[0]
    driver = headless_chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for name, path, ready in PAGES:
            driver.set_window_size(1440, 1000)
            driver.get(url + path.format(best=best))
            WebDriverWait(driver, 60, poll_frequency=0.2).until(
                lambda d, css=ready: d.find_elements(By.CSS_SELECTOR, css)
            )
            time.sleep(2.0)  # let the figures finish drawing
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1440, min(max(height + 20, 700), 2600))
            out = args.out / f"{args.prefix}_{name}.png"
            driver.save_screenshot(str(out))
            print(out)
    finally:
        driver.quit()
        httpd.shutdown()


if __name__ == "__main__":
    main()
