"""Cutting crops from a field: centring, masks, clean mode, padding and quarantine reasons."""

from __future__ import annotations

import numpy as np
from cytotune.engine.crop.extract import cut_cells


def field_with_cells():
    h, w = 60, 80
    labels = np.zeros((h, w), dtype=np.int32)
    labels[20:27, 30:37] = 1  # normal 7x7 cell, centroid (23, 33)
    labels[0:5, 60:66] = 2  # touches the top edge
    labels[40:42, 10:12] = 3  # 4 px: too small
    labels[30:58, 50:78] = 4  # 28x28 box: does not fit a 16 px crop
    labels[45:50, 3:8] = 5  # window leaves the field on the left: padded
    rng = np.random.default_rng(1)
    field = rng.integers(0, 4000, (2, h, w)).astype(np.uint16)
    return field, labels


def test_reasons_and_accepted_cells():
    field, labels = field_with_cells()
    cuts = {c.index: c for c in cut_cells(field, labels, 16, min_area=10)}
    assert cuts[1].reason is None
    assert cuts[5].reason is None
    assert cuts[2].reason == "touches the field edge"
    assert cuts[3].reason.startswith("too small: 4 px")
    assert cuts[4].reason.startswith("too large: box 28x28")
    assert cut_cells(field, labels, 16, min_area=10, max_area=40)[0].reason.startswith(
        "too large: 49 px"
    )


def test_crop_is_centred_and_copies_the_field():
    field, labels = field_with_cells()
    cut = next(c for c in cut_cells(field, labels, 16) if c.index == 1)
    assert cut.centroid == (23.0, 33.0)
    assert cut.box == (20, 30, 27, 37)
    # Window rows 15..30, columns 25..40 of the field.
    np.testing.assert_array_equal(cut.image, field[:, 15:31, 25:41])
    np.testing.assert_array_equal(cut.mask, (labels[15:31, 25:41] == 1).astype(np.uint8))
    assert cut.image.dtype == np.uint16
    assert cut.mask.sum() == 49
    assert cut.metadata["area"] == 49
    assert cut.metadata["box_x1"] == 37


def test_clean_mode_zeroes_outside_the_mask():
    field, labels = field_with_cells()
    cut = next(c for c in cut_cells(field, labels, 16, clean=True) if c.index == 1)
    assert (cut.image[:, cut.mask == 0] == 0).all()
    np.testing.assert_array_equal(cut.image[:, cut.mask == 1], field[:, labels == 1])


def test_window_leaving_the_field_is_padded_with_the_background():
    field, labels = field_with_cells()
    cut = next(c for c in cut_cells(field, labels, 16) if c.index == 5)
    cy, cx = (int(round(v)) for v in cut.centroid)  # (47, 5): window columns -3..12
    assert cx - 8 < 0
    median = np.median(field.reshape(2, -1), axis=1).astype(np.uint16)
    np.testing.assert_array_equal(
        cut.image[:, :, :3], np.broadcast_to(median[:, None, None], (2, 16, 3))
    )
    np.testing.assert_array_equal(cut.image[:, :, 3:], field[:, cy - 8 : cy + 8, 0:13])
