"""Conformance: every registered strategy x framework (x backend) runs a real federation.

The strategies come from the registry, so registering one adds it here with no test
edits. Each cell runs the small federation of ``tests.conftest.small_overrides`` (digits,
4 clients, MLP, 3 rounds) and checks that all rounds ran, the final weights are finite
with the model's canonical names and shapes, and, for strategies registered with
``learns`` (:class:`strategies.StrategyInfo`), that the model beats chance clearly. The
Ray backend starts slowly: a representative subset runs there (torch only) and must
give the inline metrics bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import sandbox
import strategies
from sandbox.core import wire
from tests.conftest import ROOT, small_overrides
from tests.test_runtime import RUN_AND_REPORT, _subprocess_run, assert_same_history

FRAMEWORKS = ["torch", "keras", "mixed"]
#: one plain mean, one with client state (control variates), one byzantine-robust rule
RAY_STRATEGIES = ["fedavg", "scaffold", "krum"]
#: server step sizes that fit a 3-round run (the adaptive defaults are tuned for longer)
ARGS = {"fedadam": {"eta": 0.05}, "fedyogi": {"eta": 0.05}, "fedadagrad": {"eta": 0.05},
        "fedprox": {"proximal_mu": 0.1}}
#: "beats chance clearly": the final validation accuracy is at least this times chance
ABOVE_CHANCE = 1.5


def overrides(strategy: str, framework: str) -> dict:
    return {"framework": framework, "federation.strategy": strategy,
            "federation.strategy_args": ARGS.get(strategy, {}), "output.plot": False}


def check_conformance(cfg, result) -> None:
    """All rounds, finite canonical weights, and learning where the strategy is meant to."""
    assert [row["round"] for row in result.rounds] == list(range(cfg.rounds + 1))
    spec = wire.model_spec_for(cfg)
    with np.load(result.run_dir / "weights.npz") as stored:
        weights = {name: stored[name] for name in stored.files}
    assert [(name, w.shape) for name, w in weights.items()] == [
        (name, tuple(shape)) for name, shape in spec.weight_shapes()]
    assert all(np.isfinite(w).all() for w in weights.values())
    if strategies.info(cfg.federation.strategy).learns:
        accuracy = result.metric("central_val_accuracy")
        assert accuracy[-1] >= ABOVE_CHANCE / spec.num_classes, accuracy


class TestStrategyConformance:
    @pytest.mark.parametrize("framework", FRAMEWORKS)
    @pytest.mark.parametrize("strategy", strategies.available())
    def test_inline(self, small, strategy, framework):
        cfg = small(**overrides(strategy, framework))
        check_conformance(cfg, sandbox.run(cfg))

    @pytest.mark.parametrize("strategy", RAY_STRATEGIES)
    def test_ray_torch_equals_inline(self, tmp_path, strategy):
        extra = overrides(strategy, "torch")
        ray = _subprocess_run(RUN_AND_REPORT.format(tmp=str(tmp_path / "ray"),
                                                    extra=extra | {"backend": "ray"}))
        cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                                  small_overrides(tmp_path / "inline", **extra))
        inline = sandbox.run(cfg)
        check_conformance(cfg, inline)
        assert_same_history(inline.rounds, ray["rounds"], atol=0)
