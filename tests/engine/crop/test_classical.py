"""The classical finder and the finder registry."""

from __future__ import annotations

import numpy as np
import pytest
from cytotune.engine.crop import create_finder, list_finders
from cytotune.engine.crop.metrics import score_field

from .conftest import disc_field


def test_registry_lists_both_finders_and_suggests_close_names():
    assert {"classical", "learned"} <= set(list_finders())
    with pytest.raises(ValueError, match="did you mean 'classical'"):
        create_finder("clasical")
    with pytest.raises(ValueError, match="min_distance"):
        create_finder("classical", min_distance=0)


def test_separate_discs_are_found_exactly():
    image, truth = disc_field((96, 96), [(20, 20), (20, 70), (70, 45)], 8)
    pred = create_finder("classical").find(image)
    s = score_field(truth, pred)
    assert (s.n_true, s.n_pred) == (3, 3)
    assert s.at(0.75) == 3  # masks follow the discs closely


def test_touching_nuclei_are_split_by_the_watershed():
    # Two discs of radius 10 whose centres are 16 px apart overlap: one connected blob.
    image, truth = disc_field((64, 80), [(32, 30), (32, 46)], 10)
    from scipy import ndimage as ndi

    assert ndi.label(truth > 0)[1] == 1
    merged = create_finder("classical", split=False).find(image)
    split = create_finder("classical").find(image)
    assert merged.max() == 1
    assert split.max() == 2
    assert score_field(truth, split).at(0.5) == 2


def test_dark_objects_on_bright_background_are_inverted():
    image, truth = disc_field((80, 80), [(25, 25), (55, 55)], 9, value=30, background=220)
    pred = create_finder("classical").find(image)
    assert score_field(truth, pred).at(0.5) == 2


def test_sixteen_bit_and_blank_fields():
    image, truth = disc_field(
        (64, 64), [(32, 32)], 10, value=40000, background=1000, dtype=np.uint16
    )
    finder = create_finder("classical")
    assert score_field(truth, finder.find(image)).at(0.5) == 1
    assert finder.find(np.full((32, 32), 7, dtype=np.uint8)).max() == 0
    with pytest.raises(ValueError, match="2-D"):
        finder.find(np.zeros((2, 8, 8)))
