"""Conformance: every framework x backend x strategy runs a real Flower federation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import sandbox
from tests.conftest import ROOT, small_overrides

FRAMEWORKS = ["torch", "keras"]


def assert_same_history(a: list[dict], b: list[dict], atol: float) -> None:
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for row_a, row_b in zip(a, b, strict=True):
        for key, value in row_a.items():
            if value is None:
                continue
            assert row_b[key] == pytest.approx(value, abs=atol), (row_a["round"], key)


class TestInlineConformance:
    @pytest.mark.parametrize("framework", FRAMEWORKS)
    def test_same_seed_same_metrics(self, small, framework):
        cfg = small(framework=framework, **{"federation.fraction_train": 0.5})
        first, second = sandbox.run(cfg), sandbox.run(cfg)
        assert_same_history(first.rounds, second.rounds, atol=0)
        other = sandbox.run(small(framework=framework, seed=1))
        assert other.final["central_test_loss"] != first.final["central_test_loss"]

    def test_frameworks_agree_without_dropout(self, small):
        torch_run = sandbox.run(small(framework="torch"))
        keras_run = sandbox.run(small(framework="keras"))
        assert_same_history(torch_run.rounds, keras_run.rounds, atol=1e-3)

    def test_partial_participation_samples_clients(self, small):
        result = sandbox.run(small(rounds=4, **{"federation.fraction_train": 0.5,
                                                "federation.fraction_evaluate": 0.0}))
        assert all(r["fed_val_accuracy"] is None for r in result.rounds)
        chosen = json.loads((result.run_dir / "participation.json").read_text())
        trained = [tuple(chosen[str(r)]["train"]) for r in range(1, 5)]
        assert all(len(t) == 2 for t in trained) and len(set(trained)) > 1
        assert all("evaluate" not in chosen[str(r)] for r in range(1, 5))

    def test_node_state_persists_across_rounds(self, small):
        from clients.app import STATE_KEY, make_client_app
        from sandbox.engine.runtime.inline import run_inline
        from sandbox.engine.server import make_server_app

        cfg = small(rounds=4, **{"train.local_steps": 3, "train.local_epochs": None})

        class Sink:
            prior_ledger = None

            def round_finished(self, server_round, metrics): ...

            def strategy_started(self, accounted, node_states=None): ...

            def strategy_finished(self, accounted, stopped): ...

        grid = run_inline(make_server_app(cfg, Sink()), make_client_app(cfg), 4)
        for node_id in grid.get_node_ids():
            progress = grid.node_context(node_id).state[STATE_KEY]
            assert progress["rounds"] == 4 and progress["steps"] == 12


def _subprocess_run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


RUN_AND_REPORT = """
import json, sys
import sandbox
from tests.conftest import small_overrides
from pathlib import Path
cfg = sandbox.load_config("configs/quickstart.toml", small_overrides(Path({tmp!r}), **{extra!r}))
result = sandbox.run(cfg)
frameworks = [m for m in ("torch", "tensorflow", "keras") if m in sys.modules]
privacy = json.loads((result.run_dir / "privacy.json").read_text())
print(json.dumps({{"rounds": result.rounds, "modules": frameworks, "privacy": privacy}}))
"""


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_ray_backend_matches_inline(tmp_path, framework):
    """Flower's run_simulation (Ray) on the same apps gives the inline metrics.

    Replies are aggregated in partition-id order on every backend, so the float32 sums
    and hence the metrics are identical bit for bit.
    """
    extra = {"framework": framework, "rounds": 2, "data.num_clients": 3}
    ray = _subprocess_run(RUN_AND_REPORT.format(tmp=str(tmp_path), extra=extra | {
        "backend": "ray"}))
    inline = sandbox.run(sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                                             small_overrides(tmp_path, **extra)))
    assert_same_history(inline.rounds, ray["rounds"], atol=0)
    other = "tensorflow" if framework == "torch" else "torch"
    assert other not in ray["modules"]


def test_ray_nodes_keep_their_dp_accountant_across_rounds(tmp_path):
    """Under Ray too, each node's Opacus accountant survives rounds (Context.state)."""
    from sandbox.core.privacy import PrivacyLedger

    extra = {"rounds": 3, "data.num_clients": 3, "backend": "ray",
             "privacy.sample.enabled": True, "train.local_epochs": 1, "train.momentum": 0.0}
    ray = _subprocess_run(RUN_AND_REPORT.format(tmp=str(tmp_path), extra=extra))
    ledger = PrivacyLedger.from_json(ray["privacy"]["ledger"])
    reported = ray["privacy"]["client_reported_epsilon"]
    assert len(reported) == 3
    for pid, eps in reported.items():
        rounds = ledger.per_round(f"client-{pid}", "rdp")
        assert len(rounds) == 3 and eps == pytest.approx(rounds[-1][1], rel=1e-9)


PRUNE_ON_RAY = """
import json
import sandbox
from sandbox.core.errors import RunPruned
from tests.conftest import small_overrides
from pathlib import Path

def stop(server_round, row):
    if server_round == 1:
        raise RunPruned(1, "pruned by test")

cfg = sandbox.load_config("configs/quickstart.toml", small_overrides(Path({tmp!r}),
                          backend="ray", rounds=3, **{{"data.num_clients": 2}}))
try:
    sandbox.run(cfg, callbacks=[stop])
    outcome = "finished"
except sandbox.RunFailed as exc:
    outcome = exc.stop_reason.value
print(json.dumps({{"outcome": outcome,
                   "dirs": [p.name for p in (Path({tmp!r}) / "results").iterdir()]}}))
"""


def test_round_callback_can_stop_a_ray_run(tmp_path):
    """A callback's RunPruned reaches the caller even though Ray runs the ServerApp."""
    report = _subprocess_run(PRUNE_ON_RAY.format(tmp=str(tmp_path)))
    assert report["outcome"] == "pruned"
    assert len(report["dirs"]) == 1 and report["dirs"][0].endswith(".pruned")


def test_import_sandbox_imports_no_framework():
    code = ("import json, sys, sandbox, strategies, clients, search; print(json.dumps({'m': "
            "[m for m in ('torch','tensorflow','keras','flwr','optuna','ray','keras_tuner',"
            "'opacus') if m in sys.modules]}))")
    assert _subprocess_run(code)["m"] == []


@pytest.mark.parametrize(("framework", "forbidden"), [("torch", ["tensorflow", "keras"]),
                                                      ("keras", ["torch"])])
def test_framework_runs_import_only_their_framework(tmp_path, framework, forbidden):
    report = _subprocess_run(RUN_AND_REPORT.format(tmp=str(tmp_path),
                                                   extra={"framework": framework}))
    assert not set(forbidden) & set(report["modules"]), report["modules"]
    assert len(report["rounds"]) == 4


def test_final_weights_reproduce_final_accuracy(small):
    from clients.trainer import get_trainer
    from sandbox.core.data import load_federated_data
    from sandbox.core.models import ModelSpec

    cfg = small()
    result = sandbox.run(cfg)
    data = load_federated_data(cfg.data, cfg.seed)
    spec = ModelSpec.from_config(cfg.model, data.input_shape, data.num_classes)
    with np.load(result.run_dir / "weights.npz") as archive:
        weights = [archive[name] for name in spec.weight_names()]
    trainer = get_trainer("torch", spec, cfg.train)
    trainer.set_weights(weights)
    _, accuracy = trainer.evaluate(data.x_test, data.y_test)
    assert accuracy == pytest.approx(result.final["central_test_accuracy"])


def test_wire_format_is_flowers_npy_format():
    from flwr.app import Array

    from sandbox.core.wire import from_array, to_array

    for array in (np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros(0, np.float32),
                  np.ones((2, 3, 1, 4), np.float64), np.arange(5, dtype=np.int64)):
        ours, flowers = to_array(array), Array(array)
        assert ours.data == flowers.data and ours.shape == flowers.shape
        assert ours.dtype == flowers.dtype
        np.testing.assert_array_equal(from_array(flowers), array)
        np.testing.assert_array_equal(ours.numpy(), array)
    fortran = Array(np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    np.testing.assert_array_equal(from_array(fortran), np.arange(6.0).reshape(2, 3))


def test_flat_record_round_trip_and_errors():
    from sandbox.core.wire import FLAT_KEY, from_record, to_record

    weights = [np.ones((3, 2), np.float32), np.arange(2, dtype=np.float32)]
    record = to_record(weights)
    assert list(record.keys()) == [FLAT_KEY]
    back = from_record(record, [(3, 2), (2,)])
    for a, b in zip(weights, back, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="the model needs 9"):
        from_record(record, [(3, 3)])
