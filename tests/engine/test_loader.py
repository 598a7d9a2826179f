"""Loaders: right shapes, dtypes and normalisation; augmentation deterministic per (seed, epoch, cell)
and identical between the in-process and Ray Data paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cytotune.engine.data import CellDataset, DatasetSpec, DatasetWriter
from cytotune.engine.data.augment import AugmentConfig, row_seeds
from cytotune.engine.data.loader import LoaderConfig, create_loader

N = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    spec = DatasetSpec(
        channel_names=("dna", "actin"), dtype="uint16", shape=(2, 12, 12), group_columns=("well",)
    )
    rng = np.random.default_rng(1)
    with DatasetWriter(root / "ds", spec, rows_per_shard=16) as writer:
        for i in range(N):
            image = rng.integers(0, 4000, (2, 12, 12), dtype=np.uint16)
            mask = np.zeros((12, 12), np.uint8)
            mask[2:7, 3:10] = 1  # asymmetric so rotations are visible
            writer.add(
                f"cell{i:03d}", image, label="ab"[i % 2], groups={"well": f"w{i % 5}"}, mask=mask
            )
    return root / "ds"


def _collect(loader, epoch=0, train=False):
    out = {}
    for batch in loader.epoch(epoch, train=train):
        for j, cid in enumerate(batch.cell_ids):
            out[cid] = (
                batch.images[j].numpy(),
                int(batch.targets[j]),
                None if batch.masks is None else batch.masks[j, 0].numpy(),
            )
    return out


def test_manifest_stats_equal_numpy(dataset):
    ds = CellDataset(dataset)
    pixels = ds.images().transpose(1, 0, 2, 3).reshape(2, -1).astype(np.float64)
    s = ds.manifest.stats
    np.testing.assert_allclose(s.mean, pixels.mean(axis=1))
    np.testing.assert_allclose(s.std, pixels.std(axis=1))
    np.testing.assert_array_equal(s.p01, np.percentile(pixels, 1, axis=1, method="lower"))
    np.testing.assert_array_equal(s.p99, np.percentile(pixels, 99, axis=1, method="lower"))
    np.testing.assert_array_equal(s.max, pixels.max(axis=1))


@pytest.mark.parametrize("normalization", ["zscore", "percentile", "none"])
def test_batches_shape_dtype_normalisation(dataset, normalization):
    ds = CellDataset(dataset)
    raw = dict(zip(ds.metadata()["cell_id"], ds.images().astype(np.float64)))
    s = ds.manifest.stats
    offset, scale = {
        "zscore": (s.mean, s.std),
        "percentile": (s.p01, np.subtract(s.p99, s.p01)),
        "none": ([0, 0], [1, 1]),
    }[normalization]
    loader = create_loader(
        "inprocess", dataset, config=LoaderConfig(batch_size=16, normalization=normalization)
    )
    batches = list(loader.epoch(0))
    assert [len(b) for b in batches] == [16, 16, 8]
    assert len(loader) == 3
    b = batches[0]
    assert b.images.dtype == torch.float32
    assert b.images.shape == (16, 2, 12, 12)
    assert b.targets.dtype == torch.int64
    for j, cid in enumerate(b.cell_ids):
        expected = (raw[cid] - np.reshape(offset, (2, 1, 1))) / np.reshape(scale, (2, 1, 1))
        np.testing.assert_allclose(b.images[j].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert int(b.targets[j]) == int(cid[-3:]) % 2


def test_split_selection_and_shuffle(dataset):
    wanted = [f"cell{i:03d}" for i in range(0, N, 3)]
    loader = create_loader("inprocess", dataset, wanted, LoaderConfig(batch_size=5, seed=3))
    e0 = [c for b in loader.epoch(0) for c in b.cell_ids]
    e1 = [c for b in loader.epoch(1) for c in b.cell_ids]
    assert sorted(e0) == sorted(wanted) == sorted(e1)
    assert e0 != e1
    assert e0 == [c for b in loader.epoch(0) for c in b.cell_ids]  # same seed and epoch, same order
    with pytest.raises(ValueError, match="not in dataset"):
        create_loader("inprocess", dataset, ["nope"], LoaderConfig())


def test_rot90_and_flip_are_exact_and_masks_follow(dataset):
    ds = CellDataset(dataset)
    raw = dict(zip(ds.metadata()["cell_id"], ds.images().astype(np.float32)))
    config = LoaderConfig(
        batch_size=64,
        normalization="none",
        with_masks=True,
        augment=AugmentConfig(rot90=True, flip=True),
    )
    got = _collect(create_loader("inprocess", dataset, config=config), epoch=2, train=True)
    mask = np.zeros((12, 12), np.float32)
    mask[2:7, 3:10] = 1
    variants_seen = set()
    for cid, (image, _, m) in got.items():
        candidates = [(k, f) for k in range(4) for f in (False, True)]
        match = [
            (k, f)
            for k, f in candidates
            if np.allclose(
                image, np.rot90(raw[cid][:, :, ::-1] if f else raw[cid], k, axes=(1, 2)), atol=1e-2
            )
        ]
        assert match, f"{cid}: augmented crop is not an exact rotation/flip of the original"
        k, f = match[0]
        np.testing.assert_array_equal(m, np.rot90(mask[:, ::-1] if f else mask, k))
        variants_seen.add((k, f))
    assert len(variants_seen) >= 4


def test_augmentation_deterministic_per_seed_epoch_cell(dataset):
    config = LoaderConfig(batch_size=7, augment=AugmentConfig.standard())
    a = _collect(create_loader("inprocess", dataset, config=config), epoch=1, train=True)
    other_batching = LoaderConfig(batch_size=13, seed=0, augment=AugmentConfig.standard())
    b = _collect(create_loader("inprocess", dataset, config=other_batching), epoch=1, train=True)
    c = _collect(create_loader("inprocess", dataset, config=config), epoch=2, train=True)
    plain = _collect(create_loader("inprocess", dataset, config=config), epoch=1, train=False)
    for cid in a:
        np.testing.assert_allclose(a[cid][0], b[cid][0], atol=1e-5)
    assert sum(not np.allclose(a[k][0], c[k][0]) for k in a) > N // 2
    assert sum(not np.allclose(a[k][0], plain[k][0]) for k in a) > N // 2
    assert len(set(row_seeds(list(a), 0, 1).tolist())) == N


def test_augment_config_validation():
    with pytest.raises(ValueError, match="rotate_degrees"):
        AugmentConfig(rotate_degrees=400)
    with pytest.raises(ValueError, match="normalization"):
        LoaderConfig(normalization="minmax")


def test_ray_data_loader_matches_in_process(dataset, ray_local):
    config = LoaderConfig(batch_size=8, augment=AugmentConfig.standard(), with_masks=True)
    wanted = [f"cell{i:03d}" for i in range(N) if i % 4]
    ray_loader = create_loader("ray", dataset, wanted, config)
    local = _collect(create_loader("inprocess", dataset, wanted, config), epoch=3, train=True)
    streamed = _collect(ray_loader, epoch=3, train=True)
    assert sorted(streamed) == sorted(wanted)
    for cid in wanted:
        np.testing.assert_allclose(streamed[cid][0], local[cid][0], atol=1e-5)
        assert streamed[cid][1] == local[cid][1]
        np.testing.assert_array_equal(streamed[cid][2], local[cid][2])
    order0 = [c for b in ray_loader.epoch(0) for c in b.cell_ids]
    order1 = [c for b in ray_loader.epoch(1) for c in b.cell_ids]
    assert sorted(order0) == sorted(order1)
    assert order0 != order1


def test_regression_targets(tmp_path):
    spec = DatasetSpec(
        channel_names=("he",),
        dtype="uint8",
        shape=(1, 4, 4),
        task="regression",
        targets=("t1", "t2"),
    )
    with DatasetWriter(tmp_path / "ds", spec) as writer:
        for i in range(5):
            writer.add(f"p{i}", np.full((1, 4, 4), i, np.uint8), targets={"t1": i * 0.5, "t2": -i})
    batch = next(
        create_loader(
            "inprocess", tmp_path / "ds", config=LoaderConfig(batch_size=5, shuffle=False)
        ).epoch(0)
    )
    assert batch.targets.dtype == torch.float32
    assert batch.targets.shape == (5, 2)
    np.testing.assert_allclose(batch.targets.numpy(), [[i * 0.5, -i] for i in range(5)])


def test_ray_loader_holds_the_whole_split_after_one_epoch(dataset, ray_local):
    config = LoaderConfig(batch_size=8, drop_last=True)
    wanted = [f"cell{i:03d}" for i in range(30)]
    loader = create_loader("ray", dataset, wanted, config)
    first = [c for b in loader.epoch(0) for c in b.cell_ids]
    assert len(first) == 24
    assert set(first) <= set(wanted)
    assert sorted(loader._held["cell_id"]) == sorted(wanted)  # dropped rows are still held
    second = [c for b in loader.epoch(1) for c in b.cell_ids]
    assert len(second) == 24
    assert second != first


@pytest.mark.parametrize("with_masks", [False, True])
def test_loaders_sharing_one_decode_give_the_rows_of_their_own_decode(
    dataset, with_masks, monkeypatch
):
    """CellDataset(keep_decoded=True): the folds' in-process loaders decode the shards once
    and take their split from it, in the same order and with the same values."""
    rng = np.random.default_rng(0)
    split = [f"cell{i:03d}" for i in rng.permutation(N)[:25]] + ["cell003"]  # any order, a repeat
    config = LoaderConfig(batch_size=7, shuffle=True, seed=3, with_masks=with_masks)
    shared = CellDataset(dataset, keep_decoded=True)
    own = create_loader("inprocess", CellDataset(dataset), split, config)
    reads = []
    read = CellDataset.table
    monkeypatch.setattr(CellDataset, "table", lambda self, *a: reads.append(a) or read(self, *a))
    reused = create_loader("inprocess", shared, split, config)
    other = create_loader("inprocess", shared, ["cell001", "cell000"], config)
    assert len(reads) == 1  # one read and decode for both loaders of this instance
    for a, b in zip(own.epoch(1, train=True), reused.epoch(1, train=True)):
        assert list(a.cell_ids) == list(b.cell_ids)
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
        assert torch.equal(a.targets, b.targets)
        if with_masks:
            assert torch.equal(a.masks, b.masks)
    assert sorted(c for b in other.epoch(0) for c in b.cell_ids) == ["cell000", "cell001"]
    with pytest.raises(ValueError, match="1 requested cell ids are not in dataset"):
        create_loader("inprocess", shared, ["cell001", "nope"], config)
