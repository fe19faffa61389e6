"""The ``vectorized`` backend gives the inline backend's runs within float tolerance.

A round's clients train as one batched torch computation (:mod:`clients.vectorized`);
its kernels sum in another order than the sequential trainer's, so weights, losses and
accuracies agree with the inline run to float32 rounding (measured: <= 3e-7 relative on
these runs), and everything that does not depend on float rounding is identical: which
clients trained, every client's steps and examples, its DP accountant and ε.
"""

from __future__ import annotations

import json

import pytest

import sandbox
from tests.test_pool import Sink

DP = {"privacy.sample.enabled": True, "privacy.noise": "seeded"}
CASES = {
    "fedavg": {},
    "fedavg-dp": DP,
    # FedProx under DP-SGD is refused by the config (its update does not fit DP-SGD).
    "fedprox": {"federation.strategy": "fedprox", "federation.strategy_args": {"proximal_mu": 0.1}},
    "fedadam": {"federation.strategy": "fedadam", "federation.strategy_args": {"eta": 0.05},
                "federation.fraction_train": 0.5},
    "fedadam-dp": {"federation.strategy": "fedadam", "federation.strategy_args": {"eta": 0.05},
                   "federation.fraction_train": 0.5, **DP},
    "scaffold": {"federation.strategy": "scaffold", "train.momentum": 0.0},
    "scaffold-dp": {"federation.strategy": "scaffold", "train.momentum": 0.0, **DP},
    # uneven step counts (masks), an attacker's reply, q-FFL's pre-training loss
    "fednova-heterogeneous-attack": {"federation.strategy": "fednova",
                                     "heterogeneity.local_steps": [3, 1, 5, 2, 8, 1],
                                     "attack.partitions": [2], "attack.kind": "sign_flip"},
    "qfedavg-label-flip": {"federation.strategy": "qfedavg", "attack.partitions": [1],
                           "attack.kind": "label_flip"},
    # Flower's clipping mod around the batched replies
    "client-clipping": {"privacy.client.mode": "client_fixed", "privacy.noise": "seeded"},
    "cnn-dp": {"model.arch": "cnn", "model.channels": [4], "model.hidden": [16], **DP},
}
#: float32 training in another summation order (see the module docstring)
REL, ABS = 1e-5, 1e-7


def assert_close_runs(got, want) -> None:
    """Per-round metrics equal within float tolerance; clients, privacy identical."""
    for name in ("participation.json", "privacy.json"):
        assert (got.run_dir / name).read_text() == (want.run_dir / name).read_text(), name
    assert len(got.rounds) == len(want.rounds)
    for row, reference in zip(got.rounds, want.rounds, strict=True):
        assert set(row) == set(reference), row["round"]
        for key, value in reference.items():
            if isinstance(value, float) and not isinstance(value, bool):
                assert row[key] == pytest.approx(value, rel=REL, abs=ABS), (row["round"], key)
            else:
                assert row[key] == value, (row["round"], key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vectorized_equals_inline(small, case):
    extra = {"data.num_clients": 6, **CASES[case]}
    inline = sandbox.run(small(**extra))
    vectorized = sandbox.run(small(backend="vectorized", **extra))
    assert_close_runs(vectorized, inline)
    assert sorted(p.name for p in vectorized.run_dir.iterdir()) == \
        sorted(p.name for p in inline.run_dir.iterdir())


def test_node_states_are_the_inline_states(small):
    """Context.state (progress, each client's DP accountant, SCAFFOLD's c_i) as inline."""
    import numpy as np

    from clients import make_client_app
    from sandbox.core import wire
    from sandbox.engine.runtime.inline import run_inline
    from sandbox.engine.runtime.vectorized import run_vectorized
    from sandbox.engine.server import make_server_app

    cfg = small(backend="vectorized", **{"federation.strategy": "scaffold",
                                         "train.momentum": 0.0, **DP})
    inline = run_inline(make_server_app(cfg, Sink()), make_client_app(cfg), 4).node_states()
    batched = run_vectorized(make_server_app(cfg, Sink()), make_client_app(cfg),
                             cfg).node_states()
    assert sorted(batched) == sorted(inline)
    for node, state in inline.items():
        assert set(state.keys()) == {"client-progress", "dp-accountant", "scaffold-control"}
        for key in ("client-progress", "dp-accountant"):
            assert dict(batched[node][key]) == dict(state[key]), (node, key)
        own = wire.from_array(state["scaffold-control"][wire.FLAT_KEY])
        other = wire.from_array(batched[node]["scaffold-control"][wire.FLAT_KEY])
        np.testing.assert_allclose(other, own, rtol=1e-4, atol=1e-5)


def test_failing_clients_are_counted_as_on_inline(small):
    """Injected faults take the ClientApp's path: the same failures, counted per round."""
    extra = {"rounds": 4, "data.num_clients": 6, "faults.client_failure_rate": 0.3,
             "faults.fail_partitions": [5]}
    inline = sandbox.run(small(**extra))
    vectorized = sandbox.run(small(backend="vectorized", **extra))
    assert sum(row["train_failures"] for row in inline.rounds[1:]) >= 4
    for row, reference in zip(vectorized.rounds, inline.rounds, strict=True):
        for key in ("train_failures", "evaluate_failures", "failures"):
            assert row[key] == reference[key], (row["round"], key)
    assert_close_runs(vectorized, inline)


def test_what_it_cannot_batch_runs_as_on_inline(small, caplog):
    """Adam is not vectorized: the clients train one by one, the inline numbers exactly."""
    extra = {"train.optimizer": "adam", "train.lr": 0.01, "train.momentum": 0.0}
    inline = sandbox.run(small(**extra))
    with caplog.at_level("WARNING"):
        vectorized = sandbox.run(small(backend="vectorized", **extra))
    assert "train.optimizer = 'adam'" in caplog.text
    assert json.dumps(vectorized.rounds) == json.dumps(inline.rounds)


def test_keras_is_refused_before_anything_is_written(small, tmp_path):
    with pytest.raises(sandbox.ConfigError, match="backend = 'vectorized' trains torch"):
        sandbox.run(small(backend="vectorized", framework="keras"))
    assert not (tmp_path / "results").exists()
