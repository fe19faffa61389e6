"""Mixed federations: torch and Keras clients train one global model.

Both trainers use the canonical weight layout and the same numpy batch schedule, so
without dropout a mixed federation follows the single-framework trajectories to float
tolerance, and its accuracy matches theirs.
"""

from __future__ import annotations

import json

import pytest

import sandbox
from sandbox.core.assignment import client_framework, keras_partitions, server_framework
from sandbox.core.config import Config
from tests.conftest import ROOT

#: The quickstart (digits, 10 clients, CNN, FedAvg with momentum SGD), 8 of its 20 rounds:
#: float differences between the frameworks' kernels stay far below 1e-4 in loss there
#: (measured 2026-12-04, rounds 0-8: max |Δ central_val_loss| mixed vs torch 3.2e-6, mixed
#: vs Keras 4.2e-7, torch vs Keras 3.3e-6; equal accuracies. Over all 20 rounds the
#: chaotic growth reaches 1e-2 between torch and Keras, and final validation accuracies
#: differ by 3 of 144 examples: torch 0.972, Keras and mixed 0.951).
QUICKSTART = {"rounds": 8, "output.progress": False, "output.plot": False,
              "output.tensorboard": False}


def test_keras_partitions_seeded_or_listed():
    def mixed(seed=0, **section):
        return Config(seed=seed, framework="mixed", data={"num_clients": 10}, mixed=section)

    assert len(keras_partitions(mixed())) == 5
    assert keras_partitions(mixed(keras_fraction=0.3)) == keras_partitions(
        mixed(keras_fraction=0.3)) and len(keras_partitions(mixed(keras_fraction=0.3))) == 3
    assert any(keras_partitions(mixed(s)) != keras_partitions(mixed()) for s in (1, 2, 3))
    assert keras_partitions(mixed(keras_partitions=[9, 0])) == [0, 9]
    cfg = mixed(keras_partitions=[2])
    assert [client_framework(cfg, p) for p in (1, 2)] == ["torch", "keras"]
    assert server_framework(cfg) == "torch"
    assert keras_partitions(Config(framework="keras", data={"num_clients": 3})) == [0, 1, 2]
    assert keras_partitions(Config()) == [] and server_framework(Config()) == "torch"


def test_mixed_quickstart_matches_each_framework(tmp_path):
    runs = {}
    for framework in ("torch", "keras", "mixed"):
        cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", QUICKSTART | {
            "framework": framework, "output.dir": str(tmp_path / framework)})
        runs[framework] = sandbox.run(cfg)
    mixed = runs["mixed"]
    header = json.loads((mixed.run_dir / "run.json").read_text())
    assert header["evaluation_framework"] == "torch" and len(header["keras_partitions"]) == 5
    for single in ("torch", "keras"):
        for key in ("central_val_accuracy", "central_test_accuracy"):
            assert abs(mixed.final[key] - runs[single].final[key]) <= 0.01, (single, key)
        for key in ("central_val_loss", "train_loss", "fed_val_loss"):
            deviation = max(abs(a - b) for a, b in zip(mixed.metric(key),
                                                       runs[single].metric(key), strict=True))
            assert deviation < 1e-4, (single, key, deviation)
    assert mixed.final["central_val_accuracy"] > 0.8


def test_per_framework_columns_make_up_the_all_client_columns(small):
    """Weighted by examples as the all-client columns, the torch and Keras parts
    recombine into them."""
    from sandbox.core.experiment import load_experiment_data

    cfg = small(framework="mixed", **{"mixed.keras_partitions": [1, 2]})
    result = sandbox.run(cfg)
    clients = load_experiment_data(cfg).clients
    train_n = {fw: sum(len(c.y_train) for p, c in enumerate(clients)
                       if client_framework(cfg, p) == fw) for fw in ("torch", "keras")}
    val_n = {fw: sum(len(c.y_val) for p, c in enumerate(clients)
                     if client_framework(cfg, p) == fw) for fw in ("torch", "keras")}
    for row in result.rounds[1:]:
        for column, sizes in (("train_loss", train_n), ("fed_val_accuracy", val_n)):
            recombined = sum(row[f"{column}_{fw}"] * sizes[fw] for fw in sizes)
            assert row[column] == pytest.approx(recombined / sum(sizes.values()), rel=1e-9)
        assert row["train_loss_torch"] != row["train_loss_keras"]
