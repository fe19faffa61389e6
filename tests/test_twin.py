"""TFF twins: the export is complete and deterministic; the twin agrees with TFF.

The export tests run in the main environment in about a second. The end-to-end test
(marker ``tff``) needs TensorFlow Federated's own environment; when it is missing the test
fails with the command that builds it (``nox -s tff``) instead of skipping.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import clients
from sandbox import load_config
from sandbox.core import wire
from sandbox.core.errors import ConfigError, SandboxError
from sandbox.core.experiment import load_experiment_data
from sandbox.core.sampling import clients_for_round
from sandbox.engine.twin.export import export_experiment, file_digest
from tests.conftest import ROOT

TWIN = ROOT / "configs" / "twin_fedavg.toml"


def _config(tmp_path, **overrides):
    base = {"rounds": 3, "output.dir": str(tmp_path / "results")}
    return load_config(TWIN, {**base, **overrides})


def test_export_is_deterministic(tmp_path):
    cfg = _config(tmp_path, **{"federation.fraction_train": 0.5})
    first = export_experiment(cfg, tmp_path / "a")
    second = export_experiment(cfg, tmp_path / "b")
    assert first == second
    for name in ("experiment.json", "data.npz", "init_weights.npz", "batches.npz"):
        assert file_digest(tmp_path / "a" / name) == file_digest(tmp_path / "b" / name), name


def test_export_is_complete(tmp_path):
    cfg = _config(tmp_path, **{"federation.fraction_train": 0.5})
    experiment = export_experiment(cfg, tmp_path / "x")
    data, spec = load_experiment_data(cfg), wire.model_spec_for(cfg)
    with np.load(tmp_path / "x" / "data.npz") as archive:
        for pid, client in enumerate(data.clients):
            np.testing.assert_array_equal(archive[f"client{pid}_x"], client.x_train)
            np.testing.assert_array_equal(archive[f"client{pid}_y"], client.y_train)
        np.testing.assert_array_equal(archive["val_y"], data.y_val)
        np.testing.assert_array_equal(archive["test_x"], data.x_test)
    with np.load(tmp_path / "x" / "init_weights.npz") as archive:
        assert list(archive.files) == spec.weight_names()
        for name, array in zip(spec.weight_names(), spec.init_weights(cfg.seed), strict=True):
            np.testing.assert_array_equal(archive[name], array)
    assert [tuple(s) for _, s in experiment["model"]["weights"]] == \
        [s for _, s in spec.weight_shapes()]
    assert experiment["train"]["lr"] == cfg.train.lr and experiment["rounds"] == 3
    assert experiment["algorithm"] == {"name": "fedavg"} and experiment["client_dp"] is None
    for server_round in (1, 2, 3):
        chosen = experiment["participation"][str(server_round)]
        assert chosen == clients_for_round(cfg.seed, server_round, "train", range(10), 0.5)
        assert len(chosen) == 5


def test_exported_batches_are_the_clients_schedule(tmp_path):
    """Every exported batch order is the ClientApp's; each epoch is one exact pass."""
    cfg = _config(tmp_path)
    experiment = export_experiment(cfg, tmp_path / "x")
    epochs, batch = cfg.train.local_epochs, cfg.train.batch_size
    with np.load(tmp_path / "x" / "batches.npz") as archive:
        for server_round, pids in experiment["participation"].items():
            for pid in pids:
                n = experiment["num_examples"][pid]
                order = archive[f"r{server_round}_c{pid}_index"]
                sizes = archive[f"r{server_round}_c{pid}_sizes"]
                expected = clients.training_batches(cfg, int(server_round), pid, n)
                np.testing.assert_array_equal(order, np.concatenate(expected))
                np.testing.assert_array_equal(sizes, [len(b) for b in expected])
                assert sizes.max() <= batch and len(sizes) == epochs * -(-n // batch)
                for epoch in np.split(order, epochs):  # every example once per epoch
                    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))


def test_dp_and_fedprox_are_exported(tmp_path):
    cfg = _config(tmp_path, **{"federation.strategy": "fedprox",
                               "federation.strategy_args.proximal_mu": 0.1,
                               "privacy.client.mode": "server_fixed",
                               "privacy.client.noise_multiplier": 0.8,
                               "privacy.noise": "seeded"})
    experiment = export_experiment(cfg, tmp_path / "x")
    assert experiment["algorithm"] == {"name": "fedprox", "proximal_mu": 0.1}
    assert experiment["client_dp"]["noise_multiplier"] == 0.8
    assert experiment["client_dp"]["expected_clients"] == 10.0


@pytest.mark.parametrize("overrides", [
    {"federation.strategy": "fedmedian"},
    {"privacy.client.mode": "server_adaptive"},
    {"model.dropout": 0.2},
    {"privacy.client.mode": "server_fixed"},  # secure noise: the sample cannot be replayed
])
def test_configs_without_twin_are_config_errors(tmp_path, overrides):
    from sandbox.engine.twin import run_twin

    with pytest.raises(ConfigError, match="twin"):
        run_twin(TWIN, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def test_missing_tff_env_names_the_build_command(tmp_path, monkeypatch):
    from sandbox.engine.twin import runner

    monkeypatch.delenv(runner.TFF_PYTHON_VARIABLE, raising=False)
    monkeypatch.setattr(runner, "TFF_ENV", tmp_path / "no-such-env")
    with pytest.raises(SandboxError, match="nox -s tff") as caught:
        runner.run_twin(TWIN, [f"output.dir='{tmp_path}'"])
    assert "\n" not in str(caught.value)
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


@pytest.mark.tff
def test_fedavg_twin_matches_tff(tmp_path):
    """Keras FedAvg vs TFF's build_weighted_fed_avg: same weights every round (~1 min)."""
    from sandbox.engine.twin import run_twin
    from sandbox.engine.twin.runner import TwinError, tff_python

    try:
        tff_python()
    except TwinError as exc:
        pytest.fail(str(exc))
    twin = run_twin(TWIN, [f"output.dir='{tmp_path}'", "rounds=5"])
    summary = json.loads((twin / "comparison.json").read_text())["summary"]
    assert summary["rounds_compared"] == 5
    assert summary["weights_agree"], summary
    assert summary["curves_agree"], summary
    for name in ("comparison.png", "comparison.csv", "tff/metrics.json", "tff/run.json",
                 "tff/weights_per_round.npz", "sandbox/weights_per_round.npz",
                 "inputs/experiment.json"):
        assert (twin / name).is_file(), name
    rows = json.loads((twin / "tff" / "metrics.json").read_text())
    assert [row["round"] for row in rows] == list(range(6))
