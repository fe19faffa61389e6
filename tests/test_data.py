from __future__ import annotations

import numpy as np
import pytest

from sandbox import DataError
from sandbox.core.config import DataConfig
from sandbox.core.data import load_federated_data, partition_indices


def label_entropy(data) -> float:
    """Mean per-client label entropy (lower = more label skew)."""
    values = []
    for client in data.clients:
        p = np.bincount(client.y_train, minlength=data.num_classes) / len(client.y_train)
        p = p[p > 0]
        values.append(-(p * np.log(p)).sum())
    return float(np.mean(values))


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards", "quantity_skew"])
def test_partitions_cover_pool_exactly_once(partitioner):
    y = np.random.default_rng(0).integers(0, 10, 2000)
    cfg = DataConfig(num_clients=20, partitioner=partitioner, alpha=0.3)
    parts = partition_indices(y, cfg, seed=3, num_classes=10)
    assert len(parts) == 20
    flat = np.concatenate(parts)
    if partitioner == "shards":  # PathologicalPartitioner may drop unassigned classes
        assert len(np.unique(flat)) == len(flat)
    else:
        assert sorted(flat.tolist()) == list(range(2000))
    assert min(len(p) for p in parts) > 0


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet", "shards", "quantity_skew"])
def test_partitions_are_seeded(partitioner):
    y = np.random.default_rng(0).integers(0, 10, 1000)
    cfg = DataConfig(num_clients=10, partitioner=partitioner)
    a = partition_indices(y, cfg, seed=1, num_classes=10)
    b = partition_indices(y, cfg, seed=1, num_classes=10)
    c = partition_indices(y, cfg, seed=2, num_classes=10)
    assert all(np.array_equal(x, z) for x, z in zip(a, b, strict=True))
    assert not all(np.array_equal(x, z) for x, z in zip(a, c, strict=True))


def test_smaller_alpha_means_more_label_skew():
    entropies = [
        label_entropy(load_federated_data(DataConfig(num_clients=10, alpha=a), 0))
        for a in (0.1, 1.0, 100.0)
    ]
    iid = label_entropy(load_federated_data(DataConfig(num_clients=10, partitioner="iid"), 0))
    assert entropies[0] < entropies[1] < entropies[2]
    assert entropies[2] == pytest.approx(iid, abs=0.1)


def test_shards_give_k_labels_per_client():
    data = load_federated_data(DataConfig(num_clients=10, partitioner="shards",
                                          shards_per_client=2,
                                          client_validation_fraction=0.0), 0)
    assert all(len(np.unique(c.y_train)) == 2 for c in data.clients)


def test_quantity_skew_varies_sizes_not_labels():
    skew = load_federated_data(DataConfig(num_clients=10, partitioner="quantity_skew",
                                          quantity_beta=0.3), 0)
    iid = load_federated_data(DataConfig(num_clients=10, partitioner="iid"), 0)
    sizes = [len(c.y_train) for c in skew.clients]
    assert np.std(sizes) > 5 * np.std([len(c.y_train) for c in iid.clients])
    assert min(sizes) >= 10 * 0.8 - 1
    # Labels stay IID: every client with >= 100 examples has a label histogram close to
    # the pool's (total variation < 0.2), unlike a label-skewed Dirichlet(0.1) split.
    pool = np.bincount(np.concatenate([c.y_train for c in skew.clients]), minlength=10)
    pool = pool / pool.sum()

    def label_skew(data):
        return [0.5 * np.abs(np.bincount(c.y_train, minlength=10) / len(c.y_train) - pool).sum()
                for c in data.clients if len(c.y_train) >= 100]

    assert label_skew(skew) and max(label_skew(skew)) < 0.2
    dirichlet = load_federated_data(DataConfig(num_clients=10, alpha=0.1), 0)
    assert max(label_skew(dirichlet)) > 0.4


def test_test_validation_and_client_splits_are_disjoint_and_complete():
    cfg = DataConfig(num_clients=5, partitioner="iid", client_validation_fraction=0.25,
                     global_test_fraction=0.2, validation_fraction=0.1)
    data = load_federated_data(cfg, 0)
    total = len(data.y_test) + len(data.y_val) + sum(
        len(c.y_train) + len(c.y_val) for c in data.clients)
    assert total == 1797  # every digits sample used exactly once
    # ... and no sample in two places: compare the rows themselves (digits' images are
    # distinct except for a few exact duplicates, which must then sit in one place each).
    from sklearn.datasets import load_digits

    def rows(x):
        return {bytes(np.ascontiguousarray(r)) for r in x}

    places = [rows(data.x_test), rows(data.x_val)] + [
        rows(c.x_train) for c in data.clients] + [rows(c.x_val) for c in data.clients]
    distinct = len(rows((load_digits().images / 16.0).astype(np.float32)[..., None]))
    assert sum(len(p) for p in places) == len(set().union(*places)) == distinct
    assert len(data.y_test) == round(1797 * 0.2)
    assert len(data.y_val) == round((1797 - len(data.y_test)) * 0.1)
    client = data.clients[0]
    assert len(client.y_val) == int((len(client.y_train) + len(client.y_val)) * 0.25)
    assert data.input_shape == (8, 8, 1) and data.num_classes == 10
    assert data.clients[0].x_train.dtype == np.float32


def test_stats_match_partitions():
    data = load_federated_data(DataConfig(num_clients=4), 0)
    stats = data.stats()
    assert [c["n_train"] for c in stats["clients"]] == [len(c.y_train) for c in data.clients]
    assert all(sum(c["label_hist"]) == c["n_train"] for c in stats["clients"])


def test_mnist1d_any_size():
    data = load_federated_data(DataConfig(dataset="mnist1d", num_samples=1000, num_clients=5,
                                          partitioner="iid"), 0)
    assert data.input_shape == (40, 1)
    assert len(data.y_test) + len(data.y_val) + sum(
        len(c.y_train) + len(c.y_val) for c in data.clients) == 1000
    state = np.random.get_state()[1][:5].copy()
    load_federated_data(DataConfig(dataset="mnist1d", num_samples=500, num_clients=2), 1)
    assert np.array_equal(np.random.get_state()[1][:5], state)  # global RNG untouched


def test_synthetic_natural_split_is_non_iid():
    data = load_federated_data(DataConfig(dataset="synthetic", partitioner="natural",
                                          num_clients=8, num_samples=2000), 0)
    assert len(data.clients) == 8 and data.input_shape == (60,)
    sizes = [len(c.y_train) for c in data.clients]
    assert max(sizes) > 3 * min(sizes)  # log-normal sizes
    dominant = [np.bincount(c.y_train, minlength=10).argmax() for c in data.clients]
    assert len(set(dominant)) > 1


def test_npz_and_csv_files(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 5)).astype(np.float32), rng.integers(0, 3, 200)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_federated_data(DataConfig(dataset="npz", path=str(tmp_path / "d.npz"),
                                          num_clients=4, partitioner="iid"), 0)
    assert data.input_shape == (5,) and data.num_classes == 3
    lines = ["a,b,target"] + [f"{r[0]},{r[1]},{t}" for r, t in zip(x, y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    data = load_federated_data(DataConfig(dataset="csv", path=str(tmp_path / "d.csv"),
                                          label_column="target", num_clients=4), 0)
    assert data.input_shape == (2,)


def test_bad_data_files_name_the_key(tmp_path):
    np.savez(tmp_path / "bad.npz", features=np.zeros((10, 2)))
    with pytest.raises(DataError, match="data.path.*lacks"):
        load_federated_data(DataConfig(dataset="npz", path=str(tmp_path / "bad.npz")), 0)
    (tmp_path / "d.csv").write_text("a,label\n1,0\n2,1\n")
    with pytest.raises(DataError, match="data.label_column: 'y'"):
        load_federated_data(DataConfig(dataset="csv", path=str(tmp_path / "d.csv"),
                                       label_column="y"), 0)


def test_impossible_partitions_are_clear_errors():
    with pytest.raises(DataError, match="data.num_clients"):
        load_federated_data(DataConfig(num_clients=5000), 0)
    with pytest.raises(DataError, match="data.shards_per_client"):
        load_federated_data(DataConfig(partitioner="shards", shards_per_client=11), 0)
    with pytest.raises(DataError, match="data.min_partition_size"):
        load_federated_data(DataConfig(partitioner="quantity_skew", num_clients=100,
                                       min_partition_size=50), 0)


@pytest.mark.parametrize(("x_value", "label", "needle"), [
    (np.nan, 1, r"x has non-finite values .* in 1 row\(s\), first at row 3"),
    (np.inf, 1, r"x has non-finite values"),
    (1e39, 1, r"beyond float32"),
    (0.0, 100000, r"labels must be 0..K-1 .* 3 distinct labels up to 100000"),
    (0.0, 5, r"missing: \[2, 3, 4\]"),
])
def test_npz_rejects_non_finite_features_and_sparse_labels(tmp_path, x_value, label, needle):
    x = np.zeros((40, 3))
    y = np.arange(40) % 2
    x[3, 1], y[7] = x_value, label
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=needle):
        load_federated_data(DataConfig(dataset="npz", path=str(tmp_path / "d.npz"),
                                       num_clients=2, partitioner="iid"), 0)


@pytest.mark.parametrize(("cell", "needle"), [
    ("nan", r"non-finite cells .* column\(s\) \['b'\], first in data row 2"),
    ("inf", r"column\(s\) \['b'\]"), ("-Infinity", r"column\(s\) \['b'\]"),
    ("1e39", r"beyond float32\) in column\(s\) \['b'\], first in data row 2"),
    ("", r"data row 2, column 'b' is '', not a number"),
    ("abc", r"data row 2, column 'b' is 'abc'"),
    ("0.2,9", r"data row 2 has 4 cells, the header has 3")])
def test_csv_rejects_bad_cells_naming_row_and_column(tmp_path, cell, needle):
    lines = ["a,b,label", "0.1,0.2,0", f"0.3,{cell},1"] + [f"{i},{i},{i % 2}" for i in range(20)]
    (tmp_path / "d.csv").write_text("\n".join(lines))
    with pytest.raises(DataError, match=needle):
        load_federated_data(DataConfig(dataset="csv", path=str(tmp_path / "d.csv"),
                                       num_clients=2, partitioner="iid"), 0)


def test_natural_split_holds_out_test_and_validation_from_every_group():
    cfg = DataConfig(dataset="synthetic", partitioner="natural", num_clients=6,
                     num_samples=1200, validation_fraction=0.2)
    data = load_federated_data(cfg, 0)

    def rows(x):
        return {bytes(np.ascontiguousarray(r)) for r in x}

    places = [rows(data.x_test), rows(data.x_val), *(rows(c.x_train) for c in data.clients),
              *(rows(c.x_val) for c in data.clients)]
    assert sum(len(p) for p in places) == len(set().union(*places))  # pairwise disjoint
    assert len(data.y_val) > 0 and len(data.y_test) > 0


def test_too_little_data_for_the_held_out_sets_is_a_clear_error():
    from sandbox.core.errors import DataError

    with pytest.raises(DataError, match="nothing is left for the clients"):
        load_federated_data(DataConfig(dataset="mnist1d", num_samples=10, num_clients=1,
                                       global_test_fraction=0.9, validation_fraction=0.9), 0)
