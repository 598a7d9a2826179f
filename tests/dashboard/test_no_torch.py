"""The dashboard process never loads torch (it only reads tables and draws numpy tiles): torch
costs each dashboard worker ~400 MB and most of its start-up. The explainer registry still lists
every built-in method without importing them."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = ["app", "auth", "command", "data", "explain", "memo", "ports", "query", "serve", "stats"]
PAGES = [
    "common",
    "compare",
    "explain_controls",
    "explanations",
    "explanations_callbacks",
    "explanations_figures",
    "explanations_grid",
    "leaderboard",
    "montages",
    "pareto",
    "population",
    "sanity",
    "studies",
    "trial",
]


def _fresh(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    "module",
    [
        *(f"cytotune.dashboard.{module}" for module in MODULES),
        *(f"cytotune.dashboard.pages.{page}" for page in PAGES),
    ],
)
def test_the_dashboard_imports_without_torch(module):
    assert _fresh(f"import sys, {module}; print('torch' in sys.modules)") == "False"


def test_every_dashboard_module_and_page_is_checked():
    from pathlib import Path

    import cytotune.dashboard as dashboard

    folder = Path(dashboard.__file__).parent
    assert {p.stem for p in folder.glob("*.py")} - {"__init__"} == set(MODULES)
    assert {p.stem for p in (folder / "pages").glob("*.py")} - {"__init__"} == set(PAGES)


def test_the_numpy_parts_of_the_explainers_load_without_torch():
    code = (
        "import sys, numpy as np\n"
        "from cytotune.explainers.methods import colormap, channel_colors, overlay\n"
        "from cytotune.explainers.quality.verdicts import MEANINGS, VERDICT_NAMES\n"
        "from cytotune.explainers.job.verdicts import SCORE_COLUMNS\n"
        "rgb = overlay(np.ones((2, 4, 4)), np.ones((4, 4)))\n"
        "print(rgb.shape, 'torch' in sys.modules)"
    )
    assert _fresh(code) == "(4, 4, 3) False"


def test_list_explainers_lists_every_built_in_method_in_a_fresh_process():
    code = (
        "import sys\n"
        "from cytotune.explainers.methods import list_explainers\n"
        "print(','.join(list_explainers()), 'torch' in sys.modules)"
    )
    names = (
        "gradcam,gradcam++,inputxgradient,integrated_gradients,layercam,occlusion,"
        "saliency,smoothgrad"
    )
    assert _fresh(code) == f"{names} False"


def test_a_built_in_method_loads_on_first_use():
    code = (
        "from cytotune.explainers import create_explainer\n"
        "from cytotune.explainers.methods import GradCAM, get_explainer_class\n"
        "print(get_explainer_class('smoothgrad').__name__, get_explainer_class('gradcam') is GradCAM)"
    )
    assert _fresh(code) == "SmoothGrad True"
