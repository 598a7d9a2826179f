"""Models declare what they can do (``Capabilities``); nothing outside the model package picks
behaviour by family name or by probing a model's signature or attributes."""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cytotune.search_spaces.models import (
    Capabilities,
    CytoModel,
    capabilities_of,
    create_model,
    family_args,
    list_models,
    register_family,
)
from cytotune.search_spaces.models.tasks import HOOKS
from torch import nn

from .conftest import tiny

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "explainers", "dashboard", "search_spaces")
MODELS = ROOT / "search_spaces" / "models"  # families, registry and the interface live here
HOOK_NAMES = {name for attrs in HOOKS.values() for name in attrs} | {"prototypes", "l2"}


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if MODELS not in path.parents:
                yield path, ast.parse(path.read_text(), str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def test_no_behaviour_is_chosen_by_family_name_outside_the_model_package():
    """A string equal to a family name outside search_spaces/models is a dispatch on the name
    (``family == "protopnet"``, ``family in ("channel_attention", ...)``); declare a capability
    on the family instead and test ``capabilities_of(...)``."""
    # "backbone" is also an argument (the timm model name) of several families: not a dispatch
    fields = {f.name for name in list_models() for f in dataclasses.fields(family_args(name))}
    families = set(list_models()) - fields
    hits = [
        f"{_where(path, node)}: {node.value!r}"
        for path, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in families
    ]
    assert hits == [], "family names outside search_spaces/models:\n" + "\n".join(hits)


def test_no_signature_or_attribute_probes_of_models_outside_the_model_package():
    """``"mask" in inspect.signature(model.forward).parameters`` and ``hasattr(model,
    "prototypes")`` guess what a model does; ``capabilities_of(model)`` says it."""
    hits = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            inspect_call = (
                isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "inspect"
            )
            if name == "signature" and (inspect_call or isinstance(func, ast.Name)):
                hits.append(f"{_where(path, node)}: signature(...)")
            probed = node.args[1] if name in ("hasattr", "getattr") and len(node.args) > 1 else None
            if isinstance(probed, ast.Constant) and probed.value in HOOK_NAMES:
                hits.append(f"{_where(path, node)}: {name}(..., {probed.value!r})")
    assert hits == [], "model probes outside search_spaces/models:\n" + "\n".join(hits)


def test_nothing_outside_the_model_package_imports_a_family_module():
    """Family internals (``families.protopnet.similarity``, ``PrototypeSource``) used elsewhere
    tie that code to one family; the model's own methods (``similarities``,
    ``extra_state``) serve every family that declares the capability."""
    hits = [
        _where(path, node)
        for path, tree in _sources()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and ".families" in f".{node.module or ''}"
    ]
    assert hits == [], "family modules imported outside search_spaces/models:\n" + "\n".join(hits)


@pytest.mark.parametrize("family", list_models())
def test_extra_state_is_json_and_restores(family):
    model = create_model(family, in_chans=3, task="multiclass", num_outputs=2, **tiny(family))
    state = json.loads(json.dumps(model.extra_state()))
    if caps := capabilities_of(model).staged:
        model.set_stage("last_layer")
        state = json.loads(json.dumps(model.extra_state()))
    fresh = create_model(model.config)
    fresh.load_extra_state(state)
    assert fresh.extra_state() == state
    assert not caps or fresh.stage == "last_layer"


@pytest.mark.parametrize("family", list_models())
def test_declared_capabilities_match_what_the_model_does(family):
    model = create_model(family, in_chans=3, task="multiclass", num_outputs=2, **tiny(family))
    caps = capabilities_of(model)
    assert caps == capabilities_of(family) == type(model).capabilities
    for flag, attrs in caps.hooks().items():
        assert all(hasattr(model, a) for a in attrs), flag
    assert not hasattr(model, "attention_weights") or caps.attention_maps
    assert not hasattr(model, "push") or caps.staged
    assert not hasattr(model, "distances") or caps.prototypes


def test_capabilities_without_their_hooks_fail_at_registration():
    @dataclass(frozen=True)
    class Args:
        pass

    class Masked(CytoModel):
        def forward(self, x, mask=None):
            return x

    with pytest.raises(TypeError, match="forward takes a mask: declare capabilities"):
        register_family("__masked_undeclared", args=Args)(Masked)

    class Claims(CytoModel):
        capabilities = Capabilities(prototypes=True, takes_mask=True)

        def forward(self, x):
            return x

    with pytest.raises(
        TypeError, match=r"prototypes needs 'distances'.*takes_mask needs forward\(x, mask=None\)"
    ):
        register_family("__claims", args=Args)(Claims)
    assert "__masked_undeclared" not in list_models()
    assert "__claims" not in list_models()


def test_plain_modules_have_no_capabilities():
    assert capabilities_of(nn.Linear(2, 2)) == Capabilities()
    with pytest.raises(ValueError, match="unknown model family 'protopnt'.*plugins"):
        capabilities_of("protopnt")
