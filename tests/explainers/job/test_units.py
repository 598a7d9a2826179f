"""Small parts of the explain job, with hand-computed references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from cytotune.explainers.job.attention import received_attention
from cytotune.explainers.job.config import ExplainConfig, parse_method
from cytotune.explainers.job.figures import diverging, grid
from cytotune.explainers.job.layout import decode_map, safe_name
from cytotune.explainers.job.maps import AttachFold
from cytotune.explainers.job.overlays import pick_cells
from cytotune.explainers.job.prototypes import _crop

from tests.maps import encode_map


def test_parse_method_options_and_errors():
    assert parse_method("smoothgrad:n=8,sigma=0.1") == (
        "smoothgrad",
        {"n": 8, "sigma": 0.1},
    )
    with pytest.raises(ValueError, match="gradcam"):
        parse_method("gradcma")
    with pytest.raises(ValueError, match="key=value"):
        parse_method("smoothgrad:n")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"top_k": 0}, "top_k"),
        ({"split": "test"}, "split"),
        ({"limit": 0}, "limit"),
        ({"methods": ("gradcam", "gradcam")}, "once"),
        ({"stages": ("maps", "plots")}, "stages"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_config_errors_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplainConfig(study="x", **kwargs)


def test_changed_method_options_change_only_that_methods_key():
    a = ExplainConfig(study="x", methods=("gradcam", "smoothgrad:n=4"))
    b = ExplainConfig(study="x", methods=("gradcam", "smoothgrad:n=8"))
    assert a.method_key("gradcam") == b.method_key("gradcam")
    assert a.method_key("smoothgrad") != b.method_key("smoothgrad")


def test_map_encoding_round_trip_in_float16():
    """The tests' encoder (tests/maps.py) writes the bytes the explain workers write."""
    from cytotune.explainers.job.worker import binary_column

    x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32)
    data, shape = encode_map(x)
    assert shape == [3, 5, 7]
    assert len(data) == x.size * 2
    np.testing.assert_array_equal(decode_map(data, shape), x.astype(np.float16).astype(np.float32))
    assert encode_map(x[0])[1] == [1, 5, 7]
    assert binary_column(x[None].astype(np.float16))[0].as_py() == data


def test_safe_names_cannot_leave_the_directory():
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in safe_name("a/b\\c")
    assert safe_name("") == "_"


def test_attach_fold_keeps_planned_cells_with_their_fold():
    table = pa.table({"cell_id": ["a", "b", "c", "d"], "x": [1, 2, 3, 4]})
    out = AttachFold(np.array(["d", "b", "a"]), np.array([2, 0, 1]))(table)
    assert out.column("cell_id").to_pylist() == ["b", "a", "d"]  # grouped by fold
    assert out.column("fold").to_pylist() == [0, 1, 2]
    assert out.column("x").to_pylist() == [2, 1, 4]


def test_received_attention_by_hand():
    # 1 image, 2 heads, 2 queries, 4 keys on a 2x2 grid
    w = torch.tensor(
        [[[[1.0, 0, 0, 0], [0, 1.0, 0, 0]], [[0, 0, 1.0, 0], [0, 0, 0, 1.0]]]]
    )  # each key gets 1 of the 4 (head, query) rows -> mean 0.25 everywhere
    out = received_attention(w, (2, 2))
    np.testing.assert_allclose(out.numpy(), np.full((1, 2, 2), 0.25))
    w = torch.zeros(1, 1, 3, 4)
    w[..., 3] = 1.0  # every query looks at the bottom-right token
    out = received_attention(w, (2, 2)).numpy()[0]
    np.testing.assert_allclose(out, [[0, 0], [0, 1.0]])
    with pytest.raises(ValueError, match="square"):
        received_attention(torch.zeros(1, 1, 2, 3), (4, 4))


def test_pick_cells_puts_misclassified_first():
    frame = pd.DataFrame(
        {
            "cell_id": [f"c{i}" for i in range(20)],
            "correct": [i % 5 != 0 for i in range(20)],
            "label_index": 0,
        }
    )
    chosen = pick_cells(frame, 8, seed=0)
    assert len(chosen) == len(set(chosen)) == 8
    wrong = {f"c{i}" for i in range(0, 20, 5)}
    assert set(chosen[:2]) <= wrong
    assert len(set(chosen) & wrong) == 2


def test_crop_pads_outside_the_image():
    rgb = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    out = _crop(rgb, 0.5, 0.5, 3)  # centred on pixel (0, 0)
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[1:, 1:], rgb[:2, :2])


def test_grid_and_diverging_colours():
    tiles = [np.full((2, 3, 3), k, np.uint8) for k in range(5)]
    out = grid(tiles, 2, pad=1, fill=9)
    assert out.shape == (3 * 3 + 1, 2 * 4 + 1, 3)
    assert (out[1:3, 5:8] == 1).all()
    assert (out[7:9, 5:8] == 9).all()  # 6th slot empty
    rgb = diverging(np.array([[-1.0, 0.0, 1.0]]))[0]
    assert tuple(rgb[1]) == (255, 255, 255)
    assert rgb[2, 0] > rgb[2, 2]
    assert rgb[0, 2] > rgb[0, 0]


def test_device_localisation_equals_the_quality_functions():
    from cytotune.explainers import mass_inside, pointing_game
    from cytotune.explainers.job.worker import binary_column, localisation

    rng = np.random.default_rng(1)
    maps = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
    maps[2] = -1.0  # no positive mass: NaN share
    mask = rng.random((6, 8, 8)) > 0.6
    mask[4] = False  # empty mask: NaN hit
    mass, hits = localisation(torch.from_numpy(maps), torch.from_numpy(mask))
    np.testing.assert_allclose(mass, mass_inside(maps, mask), rtol=1e-5, equal_nan=True)
    expected = pointing_game(maps, mask).astype(np.float32)
    expected[4] = np.nan
    np.testing.assert_array_equal(hits, expected)
    column = binary_column(maps.astype(np.float16))
    assert column.to_pylist()[3] == maps[3].astype(np.float16).tobytes()


def test_cells_without_masks_get_no_localisation_scores():
    from cytotune.explainers.job.worker import localisation, optional_masks

    inside = np.ones((2, 2), np.uint8).tobytes()
    table = pa.table({"mask": pa.array([None, None], pa.binary())})
    assert optional_masks(table, "mask", 2, 2) == (None, None)  # e.g. MitoCheck: no masks
    assert optional_masks(pa.table({"x": [1]}), "mask", 2, 2) == (None, None)
    table = pa.table({"mask": pa.array([inside, None], pa.binary())})
    masks, valid = optional_masks(table, "mask", 2, 2)
    assert valid.tolist() == [True, False]
    maps = torch.ones(2, 1, 2, 2)
    mass, hits = localisation(maps, torch.from_numpy(masks) > 0, valid)
    assert mass[0] == 1.0
    assert hits[0] == 1.0
    assert np.isnan(mass[1])
    assert np.isnan(hits[1])


@pytest.mark.parametrize(
    ("source", "size"),
    [((4, 4), (32, 32)), ((3, 5), (7, 24)), ((7, 7), (224, 224)), ((8, 8), (8, 8))],
)
def test_upsampled_maps_equal_torch_bilinear(source, size):
    """What readers draw from a CAM stored at its layer's size is what the explainer returned."""
    import torch
    from cytotune.explainers.job.layout import upsample_bilinear

    maps = np.random.default_rng(0).random((3, 1, *source), dtype=np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(maps), size=size, mode="bilinear", align_corners=False
    ).numpy()
    np.testing.assert_allclose(upsample_bilinear(maps, size), want, rtol=1e-5, atol=1e-6)
