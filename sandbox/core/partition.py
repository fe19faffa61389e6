"""Partitioners: split a labelled pool over clients, seeded.

IID (a seeded shuffle in equal slices), Dirichlet label skew (Hsu, Qi & Brown 2019) and
pathological shards (McMahan et al. 2017) through flwr-datasets' partitioners, and
quantity skew (Li et al., NIID-Bench 2022). Same config + seed -> same partitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sandbox.core.errors import DataError

if TYPE_CHECKING:
    from sandbox.core.config import DataConfig


def partition_indices(
    y: np.ndarray, cfg: DataConfig, *, seed: int, num_classes: int
) -> list[np.ndarray]:
    """Split sample indices over ``cfg.num_clients`` clients with ``cfg.partitioner``."""
    n, k = len(y), cfg.num_clients
    if k > n:
        raise DataError(f"data.num_clients={k} exceeds the {n} training samples available")
    if cfg.partitioner == "quantity_skew":
        return _quantity_skew(n, cfg, seed)
    return _flwr_partition(y, cfg, seed=seed, num_classes=num_classes)


def _flwr_partition(y, cfg: DataConfig, *, seed: int, num_classes: int) -> list[np.ndarray]:
    from flwr_datasets import partitioner as fp

    k = cfg.num_clients
    if cfg.partitioner == "iid":
        # Equal slices of a seeded shuffle (IidPartitioner's slicing, but shuffled first).
        order = np.random.default_rng(seed).permutation(len(y))
        return [np.sort(part) for part in np.array_split(order, k)]
    if cfg.partitioner == "dirichlet":
        part = fp.DirichletPartitioner(
            num_partitions=k, partition_by="label", alpha=cfg.alpha,
            min_partition_size=cfg.min_partition_size, self_balancing=False, seed=seed,
        )
    elif cfg.partitioner == "shards":
        if cfg.shards_per_client > num_classes:
            raise DataError(
                f"data.shards_per_client={cfg.shards_per_client} exceeds the "
                f"{num_classes} classes of dataset '{cfg.dataset}'"
            )
        part = fp.PathologicalPartitioner(
            num_partitions=k, partition_by="label",
            num_classes_per_partition=cfg.shards_per_client,
            class_assignment_mode="first-deterministic", seed=seed,
        )
    else:
        raise DataError(f"data.partitioner '{cfg.partitioner}' is not valid here")
    part.dataset = _label_table(y)
    try:
        return [np.asarray(part.load_partition(i)["idx"], dtype=np.int64) for i in range(k)]
    except ValueError as exc:
        keys = (f"data.alpha={cfg.alpha}, data.min_partition_size={cfg.min_partition_size}"
                if cfg.partitioner == "dirichlet"
                else f"data.shards_per_client={cfg.shards_per_client}")
        raise DataError(
            f"data.partitioner='{cfg.partitioner}' failed for {k} clients on {len(y)} samples "
            f"({keys}): {exc}"
        ) from None


def _label_table(y: np.ndarray):
    import datasets

    datasets.disable_progress_bars()
    return datasets.Dataset.from_dict({"idx": np.arange(len(y)), "label": y})


def _quantity_skew(n: int, cfg: DataConfig, seed: int) -> list[np.ndarray]:
    """Client sizes ~ Dirichlet(beta) over clients, labels IID (Li et al., NIID-Bench 2022)."""
    from flwr_datasets.partitioner import SizePartitioner

    k, floor = cfg.num_clients, cfg.min_partition_size
    if k * floor > n:
        raise DataError(
            f"data.min_partition_size={floor} x data.num_clients={k} exceeds the {n} samples"
        )
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(k, cfg.quantity_beta))
    sizes = floor + rng.multinomial(n - k * floor, shares)
    order = rng.permutation(n)
    part = SizePartitioner(partition_sizes=sizes.tolist())
    part.dataset = _label_table(np.zeros(n, dtype=np.int64))
    return [order[np.asarray(part.load_partition(i)["idx"], dtype=np.int64)] for i in range(k)]
