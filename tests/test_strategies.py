"""Strategies describe themselves; config validation and the pre-flight ask the registry."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

import sandbox
import strategies
from strategies.registry import Arg
from strategies.stock import FLOWER_CLASSES, MANAGED_ARGS, PAPER_DEFAULTS
from tests.conftest import ROOT, small_overrides


@pytest.mark.parametrize("name", sorted(FLOWER_CLASSES))
def test_declared_schema_matches_flowers_constructor(name):
    """Every stock registration declares exactly Flower's tunable arguments and defaults."""
    from flwr.serverapp import strategy as flwr_strategies

    entry = strategies.info(name)
    cls = getattr(flwr_strategies, FLOWER_CLASSES[name])
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.name not in MANAGED_ARGS}
    assert set(entry.args) == set(params)
    for key, arg in entry.args.items():
        flower_default = params[key].default
        assert arg.default == PAPER_DEFAULTS.get(name, {}).get(key, flower_default), key
        assert arg.type is params[key].annotation, key
    assert entry.paper


def test_mean_aggregating_is_declared_not_kept_by_hand():
    assert strategies.mean_aggregating() == [
        "fedadagrad", "fedadam", "fedavg", "fedavgm", "fedprox", "fedyogi"]


def test_a_new_registration_is_known_to_config_validation(monkeypatch, tmp_path):
    from strategies import registry

    monkeypatch.setitem(registry._REGISTRY, "myavg", registry.StrategyInfo(  # noqa: SLF001
        "myavg", strategies.info("fedavg").factory, {"shrink": Arg(float, 1.0)},
        mean_aggregating=False, paper="test"))
    cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
        tmp_path, **{"federation.strategy": "myavg", "federation.strategy_args": {"shrink": 2}}))
    assert cfg.federation.strategy == "myavg"
    with pytest.raises(sandbox.ConfigError, match="calibrates noise to a mean"):
        sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
            tmp_path, **{"federation.strategy": "myavg", "privacy.client.mode": "server_fixed"}))


def test_register_rejects_duplicates_and_capitals():
    with pytest.raises(ValueError, match="already registered"):
        strategies.register("fedavg", strategies.info("fedavg").factory, args={},
                            mean_aggregating=True)
    with pytest.raises(ValueError, match="lower-case"):
        strategies.register("FedX", strategies.info("fedavg").factory, args={},
                            mean_aggregating=True)


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"federation.strategy": "fedfoo"},
     "unknown federation.strategy 'fedfoo'; allowed: bulyan, fedadagrad"),
    ({"federation.strategy_args": {"eta": 0.1}},
     "strategy 'fedavg' does not take ['eta']; allowed: none"),
    ({"federation.strategy": "fedadam", "federation.strategy_args": {"eta": "fast"}},
     "federation.strategy_args.eta = 'fast': strategy 'fedadam' needs a number"),
    ({"federation.strategy": "fedmedian", "privacy.client.mode": "server_fixed"},
     "federation.strategy 'fedmedian' is not one"),
    ({"federation.strategy": "fedtrimmedavg", "federation.strategy_args": {"beta": 0.6}},
     "federation.strategy_args.beta = 0.6: strategy 'fedtrimmedavg' needs a value in [0, 0.5)"),
    ({"federation.strategy": "fedadam", "federation.strategy_args": {"eta": -1.0}},
     "needs a value in (0, inf)"),
    ({"federation.strategy": "fedavgm", "federation.strategy_args": {"server_momentum": 1}},
     "needs a value in [0, 1)"),
    ({"federation.strategy": "fedprox", "privacy.sample.enabled": True},
     "federation.strategy='fedprox' with privacy.sample.enabled is not supported"),
    ({"federation.strategy": "qfedavg", "privacy.sample.enabled": True},
     "federation.strategy='qfedavg' with privacy.sample.enabled is not supported"),
    ({"federation.strategy": "krum", "federation.strategy_args": {"num_malicious_nodes": 1}},
     "num_malicious_nodes = 1: strategy 'krum' needs n > 2f + 2 with n = 4 clients sampled "
     "per round (data.num_clients × federation.fraction_train); allowed: "
     "num_malicious_nodes <= 0"),
    ({"federation.strategy": "bulyan", "data.num_clients": 6,
      "federation.strategy_args": {"num_malicious_nodes": 1}},
     "strategy 'bulyan' needs n >= 4f + 3 with n = 6"),
    ({"federation.strategy": "bulyan", "data.num_clients": 4, "federation.fraction_train": 0.5},
     "allowed: at least 3 clients per round"),
    ({"federation.strategy": "multikrum", "federation.strategy_args": {"num_nodes_to_select": 5}},
     "num_nodes_to_select = 5: strategy 'multikrum' averages at most n - f = 4"),
    ({"federation.strategy": "scaffold", "train.optimizer": "adam", "train.momentum": 0.0},
     "train.optimizer = 'adam' cannot be used with federation.strategy = 'scaffold'"),
    ({"federation.strategy": "fednova", "train.optimizer": "adam", "train.momentum": 0.0},
     "allowed: 'sgd'"),
    ({"federation.strategy": "scaffold", "privacy.client.mode": "server_fixed"},
     "federation.strategy 'scaffold' is not one"),
    ({"federation.strategy": "krum", "attack.fraction": 0.25,
      "privacy.client.mode": "server_fixed"}, "federation.strategy 'krum' is not one"),
])
def test_registry_errors_name_key_and_allowed(tmp_path, overrides, needle):
    with pytest.raises(sandbox.ConfigError) as caught:
        sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                            small_overrides(tmp_path, **overrides))
    assert needle in str(caught.value)


@pytest.mark.parametrize(("overrides", "needle"), [
    (["federation.strategy_args={beta=1}"], "strategy 'fedavg' does not take ['beta']"),
    (["privacy.sample.enabled=true", "privacy.sample.target_epsilon=0.0001",
      "privacy.delta=1e-9"], "privacy.sample.target_epsilon=0.0001 cannot be met"),
    (["model.arch=cnn", "data.dataset=synthetic"], "model.arch='cnn' needs"),
    (["output.dir=/proc/no-such-dir"], "output.dir = '/proc/no-such-dir': cannot write"),
    (["output.dir=" + str(ROOT / "README.md") + "/runs"], "is a file, not a directory"),
])
def test_preflight_errors_come_before_any_output(tmp_path, overrides, needle):
    """Exit code 2, one message, and no results directory at all."""
    out = tmp_path / "results"
    args = [sys.executable, "-m", "sandbox", "run", str(ROOT / "configs" / "quickstart.toml"),
            "--quiet", "--set", f"output.dir={out}"]
    for item in overrides:
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_preflight_returns_what_the_run_reuses(small):
    prepared = sandbox.preflight(small(**{"privacy.sample.enabled": True}))
    assert len(prepared.data.clients) == 4 and len(prepared.sample_plans) == 4
    assert prepared.spec.num_classes == 10


def test_config_docs_list_every_strategy_and_argument():
    docs = (ROOT / "configs" / "README.md").read_text()
    for name in strategies.available():
        entry = strategies.info(name)
        row = next((line for line in docs.splitlines() if line.startswith(f"| `{name}` |")), "")
        assert row, f"configs/README.md has no row for strategy {name}"
        assert ("| yes |" in row) == entry.mean_aggregating, row
        for key, arg in entry.args.items():
            assert f"`{key}` ({arg.default}" in row, (name, key)
            assert arg.interval in row, (name, key)


def test_fedavgm_uses_its_papers_server_momentum(small):
    from flwr.app import ArrayRecord

    from sandbox.engine.server import build_accounted_strategy

    cfg = small(**{"federation.strategy": "fedavgm"})
    fedavgm = build_accounted_strategy(cfg, ArrayRecord()).strategy
    assert fedavgm.server_momentum == 0.9 and fedavgm.server_learning_rate == 1.0
    cfg = small(**{"federation.strategy": "fedavgm",
                   "federation.strategy_args": {"server_momentum": 0.5}})
    assert build_accounted_strategy(cfg, ArrayRecord()).strategy.server_momentum == 0.5


@pytest.mark.parametrize(("name", "clients", "largest"), [
    ("krum", 5, 1), ("krum", 7, 2), ("multikrum", 7, 2), ("bulyan", 7, 1), ("bulyan", 11, 2)])
def test_byzantine_rules_take_the_largest_f_their_premise_allows(small, name, clients, largest):
    args = {"num_malicious_nodes": largest}
    assert small(**{"federation.strategy": name, "data.num_clients": clients,
                    "federation.strategy_args": args}).federation.strategy_args == args
    with pytest.raises(sandbox.ConfigError, match=f"allowed: num_malicious_nodes <= {largest}"):
        small(**{"federation.strategy": name, "data.num_clients": clients,
                 "federation.strategy_args": {"num_malicious_nodes": largest + 1}})


def test_a_factory_that_needs_train_settings_gets_them():
    from sandbox.core import wire
    from sandbox.core.config import FederationConfig, TrainConfig

    fed = FederationConfig(strategy="qfedavg")
    assert strategies.info("qfedavg").needs_train
    built = strategies.build_strategy(fed, 4, weighted_by_key=wire.NUM_EXAMPLES,
                                      train=TrainConfig(lr=0.2))
    assert built.client_learning_rate == 0.2 and built.train_loss_key == wire.PRE_TRAIN_LOSS
    with pytest.raises(ValueError, match="needs the experiment's train settings"):
        strategies.build_strategy(fed, 4, weighted_by_key=wire.NUM_EXAMPLES)


def test_scaffold_control_variates_move_and_are_checkpointed(small, monkeypatch):
    """c changes every round, and each round's checkpoint file holds that round's c and the
    clients' c_i (``fedsandbox run --resume``: tests/test_resume.py)."""
    import pickle

    from sandbox.engine import recorder

    saved = []
    original = recorder.save_checkpoint

    def save_and_read_back(directory, checkpoint):
        original(directory, checkpoint)
        with (directory / "checkpoint.pkl").open("rb") as handle:
            saved.append(pickle.load(handle))  # noqa: S301 - the test's own file

    monkeypatch.setattr(recorder, "save_checkpoint", save_and_read_back)
    sandbox.run(small(**{"federation.strategy": "scaffold", "federation.fraction_train": 0.5,
                         "train.momentum": 0.0}))
    controls = [ckpt.strategy.strategy.control for ckpt in saved]
    assert [ckpt.server_round for ckpt in saved] == [0, 1, 2, 3][-len(saved):]
    flat = [np.concatenate([c.ravel() for c in control]) for control in controls[-3:]]
    assert all(np.abs(c).max() > 0 for c in flat)
    assert not np.array_equal(flat[0], flat[1]) and not np.array_equal(flat[1], flat[2])
    clients_with_c = [state for state in saved[-1].node_states.values()
                      if "scaffold-control" in state]
    assert len(clients_with_c) >= 2  # two clients sampled per round hold their c_i
