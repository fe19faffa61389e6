"""Adversarial clients: seeded choice, the attacks' maths, clipping bounds them, results say who."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sandbox
from clients.attacks import flip_labels, malicious_reply
from sandbox.core.assignment import malicious_partitions
from sandbox.core.config import AttackConfig, Config


def test_malicious_partitions_are_seeded_sized_and_explicit_lists_win():
    def chosen(seed, **attack):
        return malicious_partitions(Config(seed=seed, data={"num_clients": 20},
                                           attack=attack))

    assert chosen(0) == []
    assert len(chosen(0, fraction=0.25)) == 5 and len(chosen(0, fraction=0.01)) == 1
    assert chosen(3, fraction=0.25) == chosen(3, fraction=0.25)
    assert any(chosen(s, fraction=0.25) != chosen(0, fraction=0.25) for s in range(1, 4))
    assert chosen(0, fraction=0.25, partitions=[7, 2]) == [2, 7]


def test_the_attacks_transform_the_update_against_the_received_model():
    received = [np.full((2, 3), 1.0, np.float32), np.zeros(3, np.float32)]
    local = [np.full((2, 3), 1.5, np.float32), np.full(3, -1.0, np.float32)]
    args = dict(seed=0, server_round=2, partition_id=1)
    flipped = malicious_reply(AttackConfig(kind="sign_flip", scale=4.0), local, received,
                              **args)
    np.testing.assert_allclose(flipped[0], 1.0 - 4.0 * 0.5)
    np.testing.assert_allclose(flipped[1], 4.0)
    boosted = malicious_reply(AttackConfig(kind="scale", scale=3.0), local, received, **args)
    np.testing.assert_allclose(boosted[0], 2.5)
    assert malicious_reply(AttackConfig(kind="label_flip"), local, received, **args) is local
    noisy = malicious_reply(AttackConfig(kind="gaussian", noise_std=2.0), local, received,
                            **args)
    again = malicious_reply(AttackConfig(kind="gaussian", noise_std=2.0), local, received,
                            **args)
    other_round = malicious_reply(AttackConfig(kind="gaussian", noise_std=2.0), local,
                                  received, **(args | {"server_round": 3}))
    np.testing.assert_array_equal(noisy[0], again[0])
    assert not np.array_equal(noisy[0], other_round[0])
    deviations = np.concatenate([(n - r).ravel() for n, r in zip(noisy, received,
                                                                  strict=True)])
    assert 0.5 < deviations.std() < 4.0  # N(0, 2^2) around the received model, not local
    assert all(w.dtype == np.float32 for w in flipped + boosted + noisy)


def test_label_flip_maps_each_class_to_its_mirror():
    y = np.array([0, 1, 9, 4], dtype=np.int64)
    np.testing.assert_array_equal(flip_labels(y, 10), [9, 8, 0, 5])
    assert flip_labels(y, 10).dtype == y.dtype


def _update_norm(cfg, clip: float, partition_id: int = 1) -> tuple[float, float]:
    """Norm of the update a node of ``cfg`` sends under clipping norm ``clip``, and its
    ``malicious`` metric."""
    from flwr.app import ConfigRecord, MessageType, RecordDict
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
    from flwr.supercore.task_identity import TaskIdentity

    from clients import make_client_app
    from sandbox.core import wire
    from sandbox.engine.runtime.inline import FIRST_NODE_ID, InlineGrid

    spec = wire.model_spec_for(cfg)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    grid = InlineGrid(make_client_app(cfg), 2, run_id=1)
    start = spec.init_weights(0)
    content = RecordDict({wire.ARRAYS: wire.to_record(start), wire.CONFIG: ConfigRecord(
        {wire.SERVER_ROUND: 1, KEY_CLIPPING_NORM: clip})})
    try:
        (reply,) = grid.send_and_receive([grid.create_message(
            content, MessageType.TRAIN, FIRST_NODE_ID + partition_id, "")])
    finally:
        if hasattr(grid, "close"):
            grid.close()
    assert not reply.has_error(), reply.error.reason
    sent = wire.record_to_arrays(spec, reply.content[wire.ARRAYS])
    norm = np.sqrt(sum(np.sum((s - w) ** 2) for s, w in zip(sent, start, strict=True)))
    return float(norm), reply.content[wire.METRICS][wire.MALICIOUS]


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_client_side_clipping_bounds_the_attack(framework, small):
    """The attack runs inside the train handler, Flower's fixedclipping_mod outside it:
    a 100x boosted update leaves the client clipped to the norm the server sent."""
    clipped = {"privacy.client.mode": "client_fixed"}
    honest = small(framework=framework, **clipped)
    attacker = small(framework=framework, **clipped, **{
        "attack.partitions": [1], "attack.kind": "scale", "attack.scale": 100.0})
    honest_norm, honest_flag = _update_norm(honest, 1e6)
    boosted_norm, attacker_flag = _update_norm(attacker, 1e6)
    assert (honest_flag, attacker_flag) == (0.0, 1.0)
    assert boosted_norm == pytest.approx(100 * honest_norm, rel=1e-3)
    assert _update_norm(attacker, 0.5)[0] == pytest.approx(0.5, rel=1e-4)
    assert _update_norm(attacker, 0.5, partition_id=0) == (
        pytest.approx(min(0.5, _update_norm(attacker, 1e6, partition_id=0)[0]), rel=1e-4),
        0.0)


def test_results_say_which_partitions_were_malicious(small):
    cfg = small(**{"attack.fraction": 0.5, "attack.kind": "sign_flip",
                   "federation.fraction_train": 0.5})
    result = sandbox.run(cfg)
    header = json.loads((result.run_dir / "run.json").read_text())
    chosen = malicious_partitions(cfg)
    assert header["attack"] == {"kind": "sign_flip", "partitions": chosen} and len(chosen) == 2
    for row in result.rounds[1:]:
        assert row["malicious_partitions"] == sorted(set(chosen) & set(row["train_partitions"]))
    assert "malicious_partitions" in (result.run_dir / "metrics.csv").read_text()
