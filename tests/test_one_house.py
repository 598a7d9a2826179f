"""Issue 17 ("One house"): the guards the other test files do not already hold.

- docs/contributing.md's three worked examples (a model family with its space and plugin study
  file, an attribution method, a dashboard page) run as written, each with the test it shows;
- the docs name the packages as ``cytotune.*``; the models live in a package named for them;
- one fold loader, one ``key_params``, one field coercion, no dispatch on explainer names;
- test studies through the engine's writers; no wall-clock budget asserted by a test;
- pyproject's scikit-learn minimum admits ``GroupKFold(shuffle=...)``.

Where a guard sits elsewhere, docs/contributing.md names it (or the issue's audit does).
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "explainers", "dashboard", "search_spaces", "cytotune")
CONTRIBUTING = ROOT / "docs" / "contributing.md"


def _sources(*packages: str):
    for package in packages or PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, path.relative_to(ROOT).as_posix()


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


# -- docs/contributing.md: the worked examples run as written ---------------------------------
def _block(language: str, marker: str) -> str:
    """The one fenced ``language`` block of contributing.md that contains ``marker``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", CONTRIBUTING.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"contributing.md: {len(found)} {language} blocks with {marker!r}"
    return found[0]


@pytest.fixture
def clean_registries():
    """Families, explainers and plugin modules as they were: the examples must not leak."""
    from cytotune.explainers.methods._registry import EXPLAINERS
    from cytotune.search_spaces.models import list_models
    from cytotune.search_spaces.models.registry import unregister_family

    families, explainers, modules = set(list_models()), set(EXPLAINERS), set(sys.modules)
    yield
    for name in set(list_models()) - families:
        unregister_family(name)
    for name in set(EXPLAINERS) - explainers:
        EXPLAINERS.remove(name)
    for name in set(sys.modules) - modules:
        if name.startswith("cytotune_plugin_"):
            del sys.modules[name]


def test_worked_family_example_runs_as_a_plugin_with_its_space_and_test(tmp_path, clean_registries):
    """The family module, its space and the plugin study file, exactly as the doc shows them
    (a plugin file is imported on its own, so the module's imports must be absolute)."""
    import torch
    from cytotune.engine.search.study import StudyConfig, load_spaces
    from cytotune.search_spaces.models import capabilities_of, create_model

    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "se_cnn.py").write_text(_block("python", '@register_family("se_cnn"'))
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    (study_dir / "se_cnn.yaml").write_text(_block("yaml", "name: se_cnn\n"))
    (study_dir / "study.yaml").write_text(_block("yaml", "plugins: [../lab/se_cnn.py]"))

    config = StudyConfig.from_yaml(study_dir / "study.yaml")
    assert config.plugins == (str(tmp_path / "lab" / "se_cnn.py"),)
    space = load_spaces(config.space)
    assert list(space.families) == ["se_cnn"]
    assert set(space.families["se_cnn"]) == {"width", "blocks", "reduction"}
    # the test-side entries the doc asks for: TINY's settings, checked by test_families.py
    from tests.search_spaces import conftest as family_tests

    text = CONTRIBUTING.read_text()
    for name in ("TINY", "VARIANTS"):
        assert hasattr(family_tests, name)
        assert f"an entry in `{name}`" in text or f"one in `{name}`" in text
    tests = (ROOT / "tests" / "search_spaces" / "test_families.py").read_text()
    assert "def test_every_family_has_a_tiny_config" in tests
    tiny = re.search(r'`"se_cnn": (\{.*?\})`', text).group(1)
    model = create_model(
        "se_cnn", in_chans=3, task="multiclass", num_outputs=4, **ast.literal_eval(tiny)
    )
    assert capabilities_of(model) == type(capabilities_of(model))()  # declares none
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    assert model(x).shape == (2, 4)
    assert all(p.grad is not None for p in model.parameters())

    namespace: dict = {}
    exec(_block("python", "def test_gates_scale_each_channel"), namespace)
    namespace["test_gates_scale_each_channel_by_its_sigmoid"]()


def test_worked_explainer_example_equals_captum_and_the_drop_by_hand(clean_registries):
    """The method, run in explainers/methods/gradient.py's namespace where the doc puts it, and
    its test, run in tests/explainers/test_gradient_reference.py's namespace where it goes."""
    import torch
    from cytotune.explainers.methods import gradient

    from tests.explainers import test_gradient_reference as reference

    module = {**vars(gradient), "torch": torch}
    exec(_block("python", '@register_explainer("channel_ablation")'), module)
    namespace = dict(vars(reference))
    exec(_block("python", "def test_channel_ablation_equals_captum"), namespace)
    namespace["test_channel_ablation_equals_captum_and_the_drop_by_hand"](reference.small_cnn(3))


def _load_page(tmp_path: Path):
    """The doc's page module, imported as a module of cytotune.dashboard.pages (its relative
    imports resolve there) without writing into the package."""
    path = tmp_path / "folds.py"
    path.write_text(_block("python", "PAGE = Page("))
    spec = importlib.util.spec_from_file_location("cytotune.dashboard.pages.folds_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tables(node) -> list:
    from dash import dash_table

    if isinstance(node, dash_table.DataTable):
        return [node]
    children = getattr(node, "children", None)
    children = children if isinstance(children, list) else [children] if children else []
    return [t for child in children for t in _tables(child)]


def test_worked_page_example_draws_the_folds_table(tmp_path):
    from cytotune.dashboard.data import Study
    from cytotune.dashboard.pages import Page, discover
    from cytotune.engine.search.recorder import StudyRecorder
    from cytotune.engine.search.store import StudyStore

    page = _load_page(tmp_path)
    assert isinstance(page.PAGE, Page)
    mounted = discover()
    assert page.PAGE.path not in mounted
    orders = {p: m.PAGE.order for p, m in mounted.items()}
    assert orders["compare"] < page.PAGE.order < orders["explanations"]  # as its comment says
    assert page.register(None, None) is None

    assert "No fold results yet." in str(page.layout(None, Study("e", tmp_path / "empty"), {}))

    store = StudyStore(str(tmp_path / "study"))
    recorder = StudyRecorder(store, k=3, max_epochs=1, flush_every_s=float("inf"))
    for trial_id, folds in (("t1", 3), ("t2", 2)):
        recorder.started(trial_id, {"family": "small_cnn", "small_cnn": {}, "train": {}})
        details = [{"fold": f, "epoch": 1, "accuracy": 0.5} for f in range(folds)]
        recorder.completed(trial_id, checkpoint=str(tmp_path / trial_id), fold_details=details)
    (table,) = _tables(page.layout(None, Study("s", tmp_path / "study"), {}))
    folds = pd.read_parquet(tmp_path / "study" / "folds.parquet")
    expected = folds.groupby("fold")["trial_id"].nunique()
    assert {row["fold"]: row["trials"] for row in table.data} == expected.to_dict()
    assert expected.to_dict() == {0: 2, 1: 2, 2: 1}


def test_docs_name_the_packages_under_cytotune():
    """README, docs and the cluster file import ``cytotune.engine``, never a bare ``engine``
    (tests/test_packaging.py checks the code)."""
    bare = re.compile(
        r"(?<![\w.])(from|import) (engine|dashboard|explainers|search_spaces)(?=[\s.,;])"
        r"|python -m (engine|dashboard|explainers|search_spaces)\b"
    )
    texts = [ROOT / "README.md", ROOT / "cluster.yaml", *sorted((ROOT / "docs").glob("*.md"))]
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in texts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert hits == []


def test_models_live_in_a_package_named_for_them():
    from cytotune.search_spaces.models import CytoModel, TaskHead, get_family, list_models

    for cls in (CytoModel, TaskHead):
        assert cls.__module__.startswith("cytotune.search_spaces.models.")
    for name in list_models():
        assert get_family(name).model_cls.__module__.startswith("cytotune.search_spaces.models.")


def test_every_module_says_what_it_is_for():
    """A newcomer finds where a change goes from the module docstrings (an empty
    ``__init__.py`` needs none)."""
    missing = [
        relative
        for path, relative in _sources()
        if path.read_text().strip() and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


# -- one definition each --------------------------------------------------------------------
def _defined(name: str) -> list[str]:
    return [
        f"{relative}:{node.lineno}"
        for path, relative in _sources()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == name
    ]


def test_key_params_is_defined_once():
    """The engine's end-of-search table and the dashboard share tables.key_params
    (tests/engine/test_tables.py checks the dashboard uses it)."""
    assert [hit.split(":")[0] for hit in _defined("key_params")] == ["engine/search/tables.py"]


# Each file reads weights of its own format: fold checkpoints, bundle members, cell finders
# (both finders' checkpoints through learned.read_checkpoint).
TORCH_LOADERS = {
    "engine/train/checkpoint.py",
    "engine/export/bundle.py",
    "engine/crop/learned.py",
}
FOLD_CONTRACT = {"engine/train/checkpoint.py", "engine/train/contract.py"}


def test_fold_checkpoints_load_in_one_place():
    """ "Load a fold checkpoint, build its normalisation, detect a mask argument" is
    engine.train.checkpoint.load_fold (tests/engine/export/test_load_fold.py); a second loader
    reads model.pt with torch.load or the contract's ``["normalization"]`` by hand."""
    loaders, by_hand = set(), []
    for path, relative in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _call_name(node) == "load":
                base = node.func.value if isinstance(node.func, ast.Attribute) else None
                if isinstance(base, ast.Name) and base.id == "torch":
                    loaders.add(relative)
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and node.slice.value == "normalization"
                and relative not in FOLD_CONTRACT
            ):
                by_hand.append(f"{relative}:{node.lineno}")
    assert loaders == TORCH_LOADERS, "load fold checkpoints with checkpoint.load_fold"
    assert by_hand == [], "read a checkpoint's normalisation from load_fold(...).contract"


def test_no_behaviour_is_chosen_by_explainer_name():
    """``method == "layercam"`` (worker.py once took two layers for it) is a class attribute of
    the method now (``default_layers``); families are guarded by
    tests/search_spaces/test_capabilities.py."""
    from cytotune.explainers import list_explainers

    names = set(list_explainers())
    hits = [
        f"{relative}:{node.lineno}: {constant.value!r}"
        for path, relative in _sources()
        if not relative.startswith("explainers/methods/")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Compare)
        for constant in ast.walk(node)
        if isinstance(constant, ast.Constant) and constant.value in names
    ]
    assert hits == []


# -- one field coercion ---------------------------------------------------------------------
ANNOTATION_READERS = {"get_type_hints", "get_origin", "get_args"}
DELEGATES = {"coerce", "check_fields"}


def _hand_coercions(tree: ast.AST, relative: str) -> list[str]:
    """Functions that read dataclass annotations (``typing.get_type_hints``/``get_origin``,
    ``dataclasses.fields(...)[...].type``) and check values with ``isinstance`` themselves
    instead of calling search_spaces.config.coerce / check_fields."""

    def has_fields_call(node) -> bool:
        return any(isinstance(n, ast.Call) and _call_name(n) == "fields" for n in ast.walk(node))

    hits = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        field_names: set[str] = set()
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and has_fields_call(node.value):
                field_names |= {n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}  # fmt: skip
            if isinstance(node, (ast.For, ast.comprehension)) and has_fields_call(node.iter):
                field_names |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        reads = checks = delegates = False
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                reads |= _call_name(node) in ANNOTATION_READERS
                checks |= _call_name(node) == "isinstance"
                delegates |= _call_name(node) in DELEGATES
            if isinstance(node, ast.Attribute) and node.attr == "type":
                base = node.value.value if isinstance(node.value, ast.Subscript) else node.value
                reads |= isinstance(base, ast.Name) and base.id in field_names
        if reads and checks and not delegates:
            hits.append(f"{relative}:{fn.name}")
    return hits


# None left: engine/search/study.py's _build (the audit of issue 17) calls coerce now.
HAND_COERCIONS_LEFT: set[str] = set()


def test_fields_are_checked_only_by_search_spaces_config_coerce():
    """One field coercion (the issue: "one helper each"): ``coerce`` checks a value against its
    annotation; every other config calls it (``check_fields``) rather than re-deriving types."""
    hits = {
        hit
        for path, relative in _sources()
        if relative != "search_spaces/config.py"
        for hit in _hand_coercions(ast.parse(path.read_text()), relative)
    }
    assert hits - HAND_COERCIONS_LEFT == set(), "call search_spaces.config.coerce/check_fields"
    assert HAND_COERCIONS_LEFT - hits == set(), "fixed: drop it from HAND_COERCIONS_LEFT"


def test_the_coercion_guard_sees_a_hand_rolled_check():
    source = (
        "def build(kind, value):\n"
        "    names = {f.name: f for f in dataclasses.fields(kind)}\n"
        "    for key, item in value.items():\n"
        "        if 'int' in str(names[key].type) and not isinstance(item, int):\n"
        "            raise TypeError(key)\n"
    )
    assert _hand_coercions(ast.parse(source), "x.py") == ["x.py:build"]
    delegated = source.replace("raise TypeError(key)", "coerce(item, names[key].type, key)")
    assert _hand_coercions(ast.parse(delegated), "x.py") == []


def test_a_study_file_refuses_a_bool_where_an_int_belongs():
    from cytotune.engine.search.study import StudyConfig

    with pytest.raises(ValueError, match="max_epochs"):
        StudyConfig.from_dict({"dataset": "/nowhere", "budget": {"max_epochs": True}})


@pytest.mark.parametrize(
    "section, value, message",
    [
        ("budget", {"parallel_folds": "many"}, r"budget.parallel_folds: expected int \| 'auto'"),
        ("budget", {"parallel_folds": True}, "budget.parallel_folds"),
        ("budget", {"race": 3}, "budget.race: expected str"),
        ("budget", {"time_budget_s": "1h"}, r"budget.time_budget_s: expected float \| None"),
        ("resources", {"gpus": "1"}, "resources.gpus: expected float"),
        ("folds", {"k": 2.5}, "folds.k: expected int"),
    ],
)
def test_a_study_files_sections_are_checked_by_coerce(section, value, message):
    from cytotune.engine.search.study import StudyConfig, StudyError

    with pytest.raises(StudyError, match=message):
        StudyConfig.from_dict({"dataset": "/nowhere", section: value})


def test_a_study_files_sections_keep_what_they_accepted():
    """``parallel_folds`` takes "auto" or a number, ``race`` its names; whole numbers are
    numbers where a float belongs (as coerce normalises them) and ``null`` where None is."""
    from cytotune.engine.search.study import StudyConfig

    config = StudyConfig.from_dict(
        {
            "dataset": "/nowhere",
            "budget": {"parallel_folds": 3, "race": "epochs", "time_budget_s": 60},
            "resources": {"cpus": 2, "gpus": 1},
            "folds": {"k": 3, "group": None},
        }
    )
    assert (config.budget.parallel_folds, config.budget.race) == (3, "epochs")
    assert config.budget.time_budget_s == 60.0
    assert isinstance(config.budget.time_budget_s, float)
    assert (config.resources.cpus, config.resources.gpus) == (2.0, 1.0)
    assert (config.folds.k, config.folds.group) == (3, None)
    auto = StudyConfig.from_dict({"dataset": "/nowhere", "budget": {"parallel_folds": "auto"}})
    assert auto.budget.parallel_folds == "auto"


# -- one ranking ----------------------------------------------------------------------------
def test_the_compare_pages_family_best_is_the_leaderboards_first_of_the_family():
    from cytotune.dashboard.pages.compare import family_best
    from cytotune.engine.search.leaderboard import ranked

    trials = pd.DataFrame(
        {
            "trial_id": ["late", "early", "worse"],
            "number": [1, 0, 2],
            "status": ["completed"] * 3,
            "family": ["small_cnn"] * 3,
            "val/f1_macro": [0.8, 0.8, 0.7],
        }
    )
    first = ranked(trials, "val/f1_macro", "max")["trial_id"].iloc[0]
    assert first == "early"
    assert family_best(trials, "f1_macro", "max") == {"small_cnn": first}


# -- tests ----------------------------------------------------------------------------------
STUDY_BUILDERS = ("tests/studies.py", "tests/dashboard/factory.py", "tests/maps.py")


def test_test_studies_are_written_by_the_engines_writers():
    """The dashboard's studies once came from a 445-line hand-built store; the builders now go
    through the recorder, tables.write_table and the explain layout, never pandas or pyarrow."""
    by_hand = re.compile(r"\.to_parquet\(|\bpq\.write_table\(|import pyarrow\.parquet|\.to_csv\(")
    hits = [
        f"{name}:{n}: {line.strip()}"
        for name in STUDY_BUILDERS
        for n, line in enumerate((ROOT / name).read_text().splitlines(), 1)
        if by_hand.search(line)
    ]
    assert hits == []
    for name in ("tests/studies.py", "tests/dashboard/factory.py"):
        assert "StudyRecorder" in (ROOT / name).read_text(), name


# None left: tests/dashboard/test_port.py checks "fails at once" by the server never starting.
WALL_CLOCK_LEFT: set[str] = set()
CLOCKS = {"perf_counter", "time", "monotonic", "perf_counter_ns", "monotonic_ns"}


def _timed_names(tree: ast.AST) -> set[str]:
    """Names assigned ``clock() - start``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.BinOp):
            left = node.value.left
            if isinstance(left, ast.Call) and _call_name(left) in CLOCKS:
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_no_test_asserts_a_wall_clock_budget():
    """A time budget asserted on shared CI measures the neighbours (the 10,000-trial
    leaderboard's 2 s moved to bench/leaderboard_browser.py); waiting loops with a deadline are
    fine, an ``assert elapsed < budget`` is not."""
    offenders = set()
    for path, relative in _sources("tests"):
        tree = ast.parse(path.read_text())
        timed = _timed_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare):
                parts = [node.test.left, *node.test.comparators]
                for part in parts:
                    if (isinstance(part, ast.Name) and part.id in timed) or (
                        isinstance(part, ast.BinOp)
                        and isinstance(part.left, ast.Call)
                        and _call_name(part.left) in CLOCKS
                    ):
                        offenders.add(relative)
    assert offenders - WALL_CLOCK_LEFT == set(), "measure it in bench/, not in a test"
    assert WALL_CLOCK_LEFT - offenders == set(), "fixed: drop it from WALL_CLOCK_LEFT"


# -- dependencies ---------------------------------------------------------------------------
def _minimum(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([\d.]+)", requirement)
    assert match, f"{requirement!r} states no minimum"
    return tuple(int(x) for x in match.group(1).split("."))


def test_scikit_learn_minimum_admits_group_kfold_shuffle():
    """``GroupKFold(k, shuffle=True, ...)`` (engine/data/folds.py) came in scikit-learn 1.6."""
    folds = (ROOT / "engine" / "data" / "folds.py").read_text()
    uses_shuffle = re.search(
        r"GroupKFold\([^)]*shuffle=", folds.replace("StratifiedGroupKFold", "")
    )
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (sklearn,) = [d for d in dependencies if d.startswith("scikit-learn")]
    if uses_shuffle:
        assert _minimum(sklearn) >= (1, 6), (
            f"pyproject: {sklearn!r}; GroupKFold(shuffle=) needs 1.6"
        )
    import sklearn as installed

    assert tuple(int(x) for x in installed.__version__.split(".")[:2]) >= _minimum(sklearn)[:2]
