"""cytotune.registry.Registry, the one registry behind families, explainers, synthetic tasks,
cell finders, bundle formats and image readers."""

from __future__ import annotations

import sys

import pytest

from cytotune.registry import Registry


def test_register_get_list_and_close_matches():
    things: Registry[type] = Registry("widget", hint=" (register one with @WIDGETS.register)")

    @things.register("round_cell")
    class Round: ...

    @things.register("rod_cell")
    class Rod: ...

    assert things.get("round_cell") is Round
    assert things.list() == ["rod_cell", "round_cell"]
    assert things.list("ro?_*") == ["rod_cell"]
    assert "rod_cell" in things
    assert list(things) == ["round_cell", "rod_cell"]  # registration order
    with pytest.raises(ValueError, match=r"unknown widget 'round_cel' \(did you mean 'round_cell'"):
        things.get("round_cel")
    with pytest.raises(ValueError, match=r"registered: rod_cell, round_cell \(register one"):
        things.get("square")


def test_a_taken_name_refuses_another_object_but_not_the_same_one():
    things: Registry[type] = Registry("widget")
    first = things.register("a")(type("A", (), {}))
    assert things.register("a")(first) is first
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        things.register("a")(type("B", (), {}))
    things.remove("a")
    assert things.list() == []
    with pytest.raises(ValueError, match="unknown widget 'a'"):
        things.remove("a")


def test_register_sets_the_name_attribute_once_registered():
    things: Registry[type] = Registry("widget", name_attr="name")

    @things.register("round_cell")
    class Round: ...

    assert Round.name == "round_cell"
    taken = type("Taken", (), {"name": "mine"})
    with pytest.raises(ValueError, match="widget 'round_cell' is already registered"):
        things.register("round_cell")(taken)
    assert taken.name == "mine"  # refused: left as it was
    plain: Registry[type] = Registry("widget")
    assert not hasattr(plain.register("rod_cell")(type("Rod", (), {})), "name")


@pytest.mark.parametrize(
    "module, decorator, registry",
    [
        ("cytotune.explainers.methods._registry", "register_explainer", "EXPLAINERS"),
        ("cytotune.engine.crop.finders", "register_finder", "FINDERS"),
        ("cytotune.engine.synth.tasks", "register_task", "TASKS"),
    ],
)
def test_class_decorators_of_the_axes_name_their_class(module, decorator, registry):
    """One "register and set cls.name" decorator: Registry.register with name_attr="name"."""
    import importlib

    axis = importlib.import_module(module)
    cls = getattr(axis, decorator)("a_test_only_entry")(type("Entry", (), {}))
    try:
        assert cls.name == "a_test_only_entry"
        assert getattr(axis, registry).get("a_test_only_entry") is cls
    finally:
        getattr(axis, registry).remove("a_test_only_entry")


def test_lazy_entries_are_listed_and_imported_when_asked_for(tmp_path, monkeypatch):
    (tmp_path / "lazy_widget_mod.py").write_text(
        "from tests.test_registry import LAZY\n@LAZY.register('lazy')\nclass Lazy: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert LAZY.list() == ["lazy"]
    assert "lazy" not in LAZY
    assert LAZY.get("lazy").__name__ == "Lazy"
    assert "lazy_widget_mod" in sys.modules


LAZY: Registry[type] = Registry("widget", lazy={"lazy": "lazy_widget_mod"})


@pytest.mark.parametrize(
    "module, attribute",
    [
        ("cytotune.search_spaces.models.registry", "FAMILIES"),
        ("cytotune.explainers.methods._registry", "EXPLAINERS"),
        ("cytotune.engine.synth.tasks", "TASKS"),
        ("cytotune.engine.crop.finders", "FINDERS"),
        ("cytotune.engine.export.formats", "FORMATS"),
        ("cytotune.engine.data.readers", "READERS"),
    ],
)
def test_every_axis_uses_the_one_registry(module, attribute):
    import importlib

    assert isinstance(getattr(importlib.import_module(module), attribute), Registry)


def test_the_public_functions_keep_working():
    from cytotune.engine.crop.finders import create_finder, list_finders
    from cytotune.engine.export.formats import get_format
    from cytotune.engine.synth import list_tasks
    from cytotune.explainers import list_explainers
    from cytotune.search_spaces.models import get_family, list_models

    assert "small_cnn" in list_models()
    assert get_family("small_cnn").name == "small_cnn"
    assert "gradcam" in list_explainers("*cam")
    assert list_tasks("micro*") == ["microtubule"]
    assert {"classical", "learned"} <= set(list_finders())
    assert create_finder("classical").name == "classical"
    assert get_format("onnx").filename.endswith(".onnx")
    with pytest.raises(ValueError, match=r"unknown bundle format 'onx' \(did you mean 'onnx'"):
        get_format("onx")
