"""Pages mount themselves: the app finds every page module declaring ``PAGE``, so a new page is
one file (written here into a throwaway package) and its navigation entry comes with it."""

from __future__ import annotations

import sys
import textwrap

import pytest
from cytotune.dashboard import app
from cytotune.dashboard.pages import Page, discover

PAGE_MODULE = textwrap.dedent(
    """
    from cytotune.dashboard.pages import Page

    PAGE = Page("{path}", nav="{nav}", order={order})


    def layout(ctx, study, params):
        return "{path} page"


    def register(app, ctx):
        pass
    """
)


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "extra_pages"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "helpers.py").write_text("X = 1\n")  # a module without PAGE is not a page
    monkeypatch.syspath_prepend(str(tmp_path))
    yield root
    for name in [m for m in sys.modules if m.startswith("extra_pages")]:
        del sys.modules[name]


def test_a_page_module_is_found_by_its_declaration(package):
    (package / "cells.py").write_text(PAGE_MODULE.format(path="cells", nav="Cells", order=5))
    found = discover("extra_pages")
    assert list(found) == ["cells"]
    assert found["cells"].PAGE == Page("cells", nav="Cells", order=5)
    assert found["cells"].layout(None, None, {}) == "cells page"


def test_two_pages_with_one_path_are_refused_naming_both(package):
    (package / "a.py").write_text(PAGE_MODULE.format(path="same", nav="A", order=1))
    (package / "b.py").write_text(PAGE_MODULE.format(path="same", nav="B", order=2))
    with pytest.raises(ValueError, match=r"extra_pages\.a and extra_pages\.b both declare"):
        discover("extra_pages")


def test_the_app_mounts_the_declared_pages_in_nav_order():
    assert set(app.PAGES) == {"leaderboard", "compare", "explanations", "studies", "trial"}
    assert app.NAV == (
        ("leaderboard", "Leaderboard"),
        ("compare", "Compare"),
        ("explanations", "Explanations"),
        ("studies", "Studies"),
    )  # the trial page is reached from the leaderboard only
    assert set(app.MEMO_PAGES) == {"leaderboard", "trial", "explanations"}
    assert not app.PAGES["studies"].PAGE.needs_study
