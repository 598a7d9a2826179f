"""Fixtures: generated studies, one dashboard server per module, one headless chromium."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest

from .factory import make_dataset, make_study

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCRATCH = Path(tempfile.gettempdir()) / "cytotune-screenshots"


@pytest.fixture(scope="session")
def studies_root(tmp_path_factory) -> Path:
    """A folder with two generated studies (alpha with explanations, beta without) and a broken one."""
    root = tmp_path_factory.mktemp("studies")
    dataset = make_dataset(root / "dataset")
    make_study(root, "alpha", n_trials=12, dataset=dataset, explain=True, seed=0)
    make_study(root, "beta", n_trials=5, dataset=dataset, explain=False, seed=1, status="running")
    broken = root / "broken"
    broken.mkdir()
    (broken / "study.yaml").write_text("name: broken\n")
    (broken / "trials.parquet").write_bytes(b"PAR1 not really parquet")
    return root


class Server:
    """A dashboard app served by werkzeug on a free local port, in a thread."""

    def __init__(self, root: Path, token: str | None = None) -> None:
        import logging

        from cytotune.dashboard.app import create_app
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.app = create_app(str(root), token=token, refresh_s=2.0)
        self.httpd = make_server("127.0.0.1", 0, self.app.server, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def server(studies_root):
    srv = Server(studies_root)
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def browser():
    """Headless chromium through selenium; skips (with the reason) only when it is not installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    from tests.dashboard.browser import headless_chromium

    try:
        driver = headless_chromium()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 15.0):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition)


def screenshot(driver, name: str, height: int | None = None) -> Path:
    """Save the whole page (resized to its height) as dashboard_<name>.png: into docs/ with
    CYTOTUNE_SCREENSHOTS=1 (to refresh the README's pictures), else into a temporary folder,
    so a plain test run leaves the checkout unchanged."""
    target = DOCS if os.environ.get("CYTOTUNE_SCREENSHOTS") == "1" else SCRATCH
    target.mkdir(exist_ok=True)
    full = height or driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, min(max(full + 20, 700), 2600))
    path = target / f"dashboard_{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)
    return path
