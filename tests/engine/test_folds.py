"""Folds: grouped splits never share a group, match scikit-learn, are hashed, stored and audited."""

from __future__ import annotations

import numpy as np
import pytest
from cytotune.engine.cli import main
from cytotune.engine.data import CellDataset, DatasetSpec, DatasetWriter
from cytotune.engine.data.folds import leakage_audit, load_folds, make_folds, save_folds
from sklearn.model_selection import StratifiedGroupKFold


@pytest.fixture()
def dataset(tmp_path):
    """60 cells in 12 wells (well-pure classes, 3 classes), 1x4x4 crops."""
    spec = DatasetSpec(
        channel_names=("dna",), dtype="uint8", shape=(1, 4, 4), group_columns=("plate", "well")
    )
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "ds", spec) as writer:
        for i in range(60):
            well = i % 12
            writer.add(
                f"c{i:02d}",
                rng.integers(0, 255, (1, 4, 4), dtype=np.uint8),
                label="xyz"[well % 3],
                groups={"plate": f"p{well % 2}", "well": f"w{well}"},
            )
    return tmp_path / "ds"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_folds_never_share_a_group_and_match_sklearn(dataset, seed):
    folds = make_folds(dataset, k=4, group="well", stratify="label", seed=seed)
    meta = folds.assignment.merge(CellDataset(dataset).metadata(), on="cell_id")
    for fold in range(4):
        train, val = folds.split(fold)
        train_wells = set(meta.set_index("cell_id").loc[train, "well"])
        val_wells = set(meta.set_index("cell_id").loc[val, "well"])
        assert train_wells.isdisjoint(val_wells)
        assert len(train) + len(val) == 60
    assert folds.audit["total_shared_groups"] == 0
    # the independent reference: scikit-learn's splitter on the same arrays
    reference = np.full(60, -1)
    for fold, (_, val) in enumerate(
        StratifiedGroupKFold(4, shuffle=True, random_state=seed).split(
            np.zeros(60), meta["label"], meta["well"]
        )
    ):
        reference[val] = fold
    np.testing.assert_array_equal(folds.assignment["fold"].to_numpy(), reference)


def test_every_cell_in_exactly_one_validation_fold(dataset):
    folds = make_folds(dataset, k=5, group="well")
    val_ids = np.concatenate([folds.split(f)[1] for f in range(5)])
    assert sorted(val_ids) == sorted(folds.assignment["cell_id"])
    assert len(set(val_ids)) == 60


def test_leave_one_group_out_and_naive_audit(dataset):
    folds = make_folds(dataset, group="plate", method="leave-one-group-out", audit_naive=True)
    assert folds.k == 2
    assert folds.audit["total_shared_groups"] == 0
    naive = folds.audit["naive_per_cell"]
    assert naive["total_shared_groups"] > 0  # per-cell k-fold puts both plates on both sides


def test_audit_counts_hand_example():
    folds = np.array([0, 0, 1, 1, 1])
    groups = np.array(["a", "b", "a", "c", "c"])
    audit = leakage_audit(folds, groups, np.array(list("xyxyy")))
    assert [f["shared_groups"] for f in audit["folds"]] == [1, 1]  # "a" straddles both folds
    assert [f["val_cells_in_shared_groups"] for f in audit["folds"]] == [1, 1]
    assert audit["folds"][1]["val_class_counts"] == {"x": 1, "y": 2}


def test_hash_stable_and_sensitive_store_and_reload(dataset):
    a = make_folds(dataset, k=4, group="well", seed=0)
    b = make_folds(dataset, k=4, group="well", seed=0)
    c = make_folds(dataset, k=4, group="well", seed=1)
    assert a.hash == b.hash != c.hash
    save_folds(dataset, a)
    save_folds(dataset, b)  # identical splits: allowed
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_folds(dataset, c)
    loaded = load_folds(dataset, a.name)
    assert loaded.hash == a.hash
    assert loaded.assignment.equals(a.assignment)
    with pytest.raises(FileNotFoundError, match="cytotune folds"):
        load_folds(dataset, "nope")


def test_stale_folds_rejected_after_dataset_changes(dataset, tmp_path):
    save_folds(dataset, make_folds(dataset, k=4, group="well"))
    manifest = (
        (dataset / "manifest.json").read_text().replace('"content_hash": "', '"content_hash": "x')
    )
    (dataset / "manifest.json").write_text(manifest)
    with pytest.raises(ValueError, match="dataset hash changed"):
        load_folds(dataset, "k4-well")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"group": "patient"}, "not in dataset"),
        ({"k": 20, "group": "well"}, "only 12 distinct groups"),
        ({"k": 1, "group": "well"}, ">= 2"),
        ({"method": "magic"}, "not one of"),
    ],
)
def test_bad_fold_requests(dataset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_folds(dataset, **kwargs)


def test_cli_prints_audit(dataset, capsys):
    assert main(["folds", str(dataset), "--k", "3", "--group", "well", "--audit-naive"]) == 0
    out = capsys.readouterr().out
    assert "leakage: 0 values of 'well' shared" in out
    assert "naive per-cell k-fold would share" in out
    assert (dataset / "folds" / "k3-well.parquet").is_file()
    assert main(["folds", str(dataset), "--group", "patient"]) == 2


def test_audit_flags_a_group_column_that_determines_the_class(dataset, capsys):
    grouped = make_folds(dataset, k=3, group="well", stratify="label")
    by_column = {e["column"]: e for e in grouped.audit["confounding"]}
    assert by_column["well"]["confounded"]
    assert by_column["well"]["single_class_values"] == 12
    assert by_column["well"]["val_cells_sharing_value_with_train"] == 0  # held out by the split
    assert not by_column["plate"]["confounded"]  # each plate holds all three classes
    naive = make_folds(dataset, k=3, group=None, stratify="label")
    meta = naive.assignment.merge(CellDataset(dataset).metadata(), on="cell_id")
    expected = np.mean([w in set(meta.well[meta.fold != f]) for w, f in zip(meta.well, meta.fold)])
    entry = {e["column"]: e for e in naive.audit["confounding"]}["well"]
    assert entry["val_cells_sharing_value_with_train"] == pytest.approx(expected)
    assert expected > 0.5
    assert main(["folds", str(dataset), "--k", "3", "--group", "none", "--name", "naive"]) == 0
    assert (
        "WARNING confounding: every value of 'well' holds a single class" in capsys.readouterr().out
    )
    assert main(["folds", str(dataset), "--k", "3", "--group", "well"]) == 0
    assert "WARNING" not in capsys.readouterr().out
