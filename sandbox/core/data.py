"""Offline datasets and seeded federated partitions.

Every dataset is a pair of numpy arrays ``x`` (float32, channels-last) and ``y`` (int64).
Three disjoint uses, split in this order (seeded; same ``DataConfig`` + seed -> identical
splits):

1. the global **test** set (``data.global_test_fraction``): reported, never used to choose;
2. the server-held **validation** set (``data.validation_fraction`` of the rest): the
   centralized validation metrics that searches, pruning and "best" select on;
3. the clients' data, split over clients by a partitioner (flwr-datasets partitioners
   where one fits); each client's share is split again into local train and local
   **validation** (``data.client_validation_fraction``), the federated validation metrics.
"""

from __future__ import annotations

import csv
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sandbox.core.errors import DataError
from sandbox.core.partition import partition_indices

if TYPE_CHECKING:
    from sandbox.core.config import DataConfig


@dataclass(frozen=True)
class ClientData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray  # the client's local validation split (federated evaluation)
    y_val: np.ndarray


@dataclass(frozen=True)
class FederatedData:
    clients: list[ClientData]
    x_test: np.ndarray  # global test set: reported, never selected on
    y_test: np.ndarray
    x_val: np.ndarray  # server-held validation set, disjoint from test and clients
    y_val: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int

    def stats(self) -> dict:
        """Samples and label histogram per client (saved with each run)."""
        per_client = [
            {
                "client": cid,
                "n_train": int(len(c.y_train)),
                "n_val": int(len(c.y_val)),
                "label_hist": np.bincount(c.y_train, minlength=self.num_classes).tolist(),
            }
            for cid, c in enumerate(self.clients)
        ]
        return {
            "num_clients": len(self.clients),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "global_test_size": int(len(self.y_test)),
            "server_validation_size": int(len(self.y_val)),
            "clients": per_client,
        }


def load_federated_data(cfg: DataConfig, seed: int) -> FederatedData:
    """Build (or fetch from the per-process cache) the federation for ``cfg`` and ``seed``."""
    return _load_cached(cfg, seed)


@functools.lru_cache(maxsize=4)
def _load_cached(cfg: DataConfig, seed: int) -> FederatedData:
    rng = np.random.default_rng(seed)
    if cfg.dataset == "synthetic" and cfg.partitioner == "natural":
        groups = make_synthetic(cfg, rng)
        return _from_natural_groups(groups, cfg, rng)
    if cfg.dataset == "synthetic":
        groups = make_synthetic(cfg, rng)
        x = np.concatenate([g[0] for g in groups])
        y = np.concatenate([g[1] for g in groups])
    else:
        x, y = load_arrays(cfg, seed)
    _check_labels(y, cfg)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    n_test = _held_out(len(y), cfg.global_test_fraction)
    n_val = _held_out(len(y) - n_test, cfg.validation_fraction)
    if len(y) - n_test - n_val < 1:
        raise DataError(f"data.dataset '{cfg.dataset}' has {len(y)} samples: nothing is left "
                        "for the clients after data.global_test_fraction and "
                        "data.validation_fraction")
    test, val, pool = np.split(np.arange(len(y)), [n_test, n_test + n_val])
    num_classes = int(max(y.max() + 1, 2))
    parts = partition_indices(y[pool], cfg, seed=seed, num_classes=num_classes)
    x_pool, y_pool = x[pool], y[pool]
    clients = [_split_client(x_pool[idx], y_pool[idx], cfg.client_validation_fraction, rng)
               for idx in parts]
    return FederatedData(clients, x[test], y[test], x[val], y[val], tuple(x.shape[1:]),
                         num_classes)


def _held_out(n: int, fraction: float) -> int:
    """Size of a held-out set: ``round(n * fraction)``, at least one sample."""
    return max(1, int(round(n * fraction)))


def load_arrays(cfg: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole labelled dataset as ``(x, y)``."""
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = (bunch.images / 16.0).astype(np.float32)[..., None]
        return x, bunch.target.astype(np.int64)
    if cfg.dataset == "mnist1d":
        return _make_mnist1d(cfg.num_samples, seed)
    if cfg.dataset == "npz":
        return _read_npz(Path(cfg.path))
    if cfg.dataset == "csv":
        return _read_csv(Path(cfg.path), cfg.label_column)
    raise DataError(f"data.dataset '{cfg.dataset}' has no array loader")


def _make_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = 1.0
    args.seed = seed
    # mnist1d seeds the global RNGs; keep the caller's global state untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return data["x"].astype(np.float32)[..., None], data["y"].astype(np.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data.path: npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise DataError(
                    f"data.path: {path} lacks array(s) {sorted(missing)}; "
                    f"it has {archive.files}, expected 'x' (features) and 'y' (integer labels)"
                )
            x, y = archive["x"], archive["y"]
    except (OSError, ValueError) as exc:
        raise DataError(f"data.path: cannot read {path} as npz: {exc}") from None
    if len(x) != len(y):
        raise DataError(f"data.path: {path}: x has {len(x)} rows but y has {len(y)}")
    try:
        features = x.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"data.path: {path}: x is not numeric ({x.dtype}): {exc}") from None
    bad = ~np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    if bad.any():
        raise DataError(f"data.path: {path}: x has non-finite values (NaN or inf, or beyond "
                        f"float32) in {int(bad.sum())} row(s), first at row "
                        f"{int(np.flatnonzero(bad)[0])}")
    return features, _as_labels(y, path)


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data.path: csv file not found: {path}")
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        raise DataError(f"data.path: {path} needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if label_column not in header:
        raise DataError(
            f"data.label_column: '{label_column}' is not a column of {path}; columns: {header}"
        )
    label_at = header.index(label_column)
    table = _numeric_table(path, header, body)
    x = np.delete(table, label_at, axis=1).astype(np.float32)
    columns = [name for i, name in enumerate(header) if i != label_at]
    bad = [name for name, finite in zip(columns, np.isfinite(x).all(axis=0), strict=True)
           if not finite]
    if bad or not np.isfinite(table[:, label_at]).all():
        # float32 features: a cell beyond float32's range is finite in ``table`` only
        rows_bad = ~(np.isfinite(x).all(axis=1) & np.isfinite(table[:, label_at]))
        raise DataError(
            f"data.path: {path} has non-finite cells (NaN, inf or beyond float32) in "
            f"column(s) {bad or [label_column]}, first in data row "
            f"{int(np.flatnonzero(rows_bad)[0]) + 1}")
    return x, _as_labels(table[:, label_at], path)


def _numeric_table(path: Path, header: list[str], body: list[list[str]]) -> np.ndarray:
    """The CSV body as float64; a short row or a non-numeric cell names row and column."""
    for row_number, row in enumerate(body, 1):
        if len(row) != len(header):
            raise DataError(f"data.path: {path}: data row {row_number} has {len(row)} cells, "
                            f"the header has {len(header)}")
    try:
        return np.array(body, dtype=np.float64)
    except ValueError:
        pass
    for row_number, row in enumerate(body, 1):
        for column, cell in zip(header, row, strict=True):
            try:
                float(cell)
            except ValueError:
                raise DataError(f"data.path: {path}: data row {row_number}, column "
                                f"'{column}' is {cell!r}, not a number (empty cells are "
                                "not allowed)") from None
    raise DataError(f"data.path: {path}: cannot read the cells as numbers")


def _as_labels(y: np.ndarray, path: Path) -> np.ndarray:
    """Labels must be the integers 0..K-1, each present (K = number of classes)."""
    if (y.ndim != 1 or not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all()
            or not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0):
        raise DataError(f"data.path: {path}: labels must be a 1-D array of integers >= 0")
    labels = y.astype(np.int64)
    present = np.unique(labels)
    if present[-1] != len(present) - 1:
        missing = sorted(set(range(int(present[-1]) + 1)) - set(present.tolist()))
        raise DataError(
            f"data.path: {path}: labels must be 0..K-1 with every class present; found "
            f"{len(present)} distinct labels up to {int(present[-1])} (missing: "
            f"{missing[:10]}{' ...' if len(missing) > 10 else ''}); remap them to 0..K-1")
    return labels


def _check_labels(y: np.ndarray, cfg: DataConfig) -> None:
    if len(np.unique(y)) < 2:
        raise DataError(f"data.dataset '{cfg.dataset}' has fewer than 2 distinct labels")


def make_synthetic(cfg: DataConfig, rng: np.random.Generator) -> list[tuple[np.ndarray, ...]]:
    """FedProx's Synthetic(alpha, beta): one softmax-linear task per client.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020. ``alpha``
    controls how much the local models differ, ``beta`` how much the local inputs differ;
    client sizes follow a log-normal law as in the paper.
    """
    k, dim, classes = cfg.num_clients, cfg.synthetic_dim, cfg.num_classes
    raw = rng.lognormal(4, 2, k)
    sizes = np.maximum(20, np.floor(raw / raw.sum() * cfg.num_samples)).astype(int)
    diag_sd = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    model_shift = rng.normal(0, cfg.synthetic_alpha, k)
    input_shift = rng.normal(0, cfg.synthetic_beta, k)
    groups = []
    for cid in range(k):
        w = rng.normal(model_shift[cid], 1, (dim, classes))
        b = rng.normal(model_shift[cid], 1, classes)
        mean = rng.normal(input_shift[cid], 1, dim)
        x = rng.normal(mean, diag_sd, (sizes[cid], dim))
        y = np.argmax(x @ w + b, axis=1)
        groups.append((x.astype(np.float32), y.astype(np.int64)))
    return groups


def _from_natural_groups(groups, cfg: DataConfig, rng: np.random.Generator) -> FederatedData:
    """Test and server validation sets take the same share of every client's group."""
    clients, held = [], {"test": ([], []), "val": ([], [])}
    for x, y in groups:
        order = rng.permutation(len(y))
        n_test = int(round(len(y) * cfg.global_test_fraction))
        n_val = int(round((len(y) - n_test) * cfg.validation_fraction))
        test, val, rest = np.split(order, [n_test, n_test + n_val])
        for name, idx in (("test", test), ("val", val)):
            held[name][0].append(x[idx])
            held[name][1].append(y[idx])
        clients.append(_split_client(x[rest], y[rest], cfg.client_validation_fraction, rng))
    (x_test, y_test), (x_val, y_val) = (
        (np.concatenate(xs), np.concatenate(ys)) for xs, ys in held.values())
    if not len(y_val):
        raise DataError("data.validation_fraction leaves the server no validation sample: "
                        "raise it or data.num_samples")
    return FederatedData(clients, x_test, y_test, x_val, y_val, (cfg.synthetic_dim,),
                         cfg.num_classes)


def _split_client(x, y, val_fraction: float, rng: np.random.Generator) -> ClientData:
    order = rng.permutation(len(y))
    n_val = min(int(len(y) * val_fraction), max(len(y) - 1, 0))
    val, train = order[:n_val], order[n_val:]
    return ClientData(x[train], y[train], x[val], y[val])
