"""Golden metrics: a change that alters numbers fails here until it is explained.

Each case is a short federation (digits, 4 clients, MLP, 3 rounds). Its per-round
metrics (``metrics.json``) are compared with ``tests/golden/<case>.json``. When a change
*should* alter numbers, regenerate the files in the same commit and say why in its
message::

    GOLDEN_UPDATE=1 nox -s tests -- tests/test_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import sandbox
from tests.conftest import ROOT, small_overrides

GOLDEN = Path(__file__).parent / "golden"
# Golden numbers need reproducible noise: seeded (not private; the default is fresh).
DP = {"privacy.sample.enabled": True, "privacy.sample.noise_multiplier": 1.0,
      "train.local_epochs": 1, "privacy.noise": "seeded"}
CASES = {
    "torch": {"framework": "torch"},
    "keras": {"framework": "keras"},
    "torch_partial": {"framework": "torch", "federation.fraction_train": 0.5},
    "torch_dp_sgd": {"framework": "torch", **DP},
    "keras_dp_sgd": {"framework": "keras", **DP},
    "torch_client_dp": {"framework": "torch", "privacy.client.mode": "server_fixed",
                        "privacy.client.noise_multiplier": 0.1,
                        "privacy.client.clipping_norm": 5.0, "privacy.noise": "seeded"},
    "mixed": {"framework": "mixed"},
    "torch_heterogeneous": {"framework": "torch", "heterogeneity.local_steps": {
        "dist": "lognormal", "median": 4.0, "sigma": 0.7, "min": 1, "max": 12,
        "per_round": True}},
    "torch_attack": {"framework": "torch", "attack.fraction": 0.25, "attack.kind": "sign_flip",
                     "attack.scale": 2.0},
    "torch_scaffold": {"framework": "torch", "federation.strategy": "scaffold",
                       "federation.fraction_train": 0.5, "train.momentum": 0.0},
    "torch_fednova": {"framework": "torch", "federation.strategy": "fednova",
                      "heterogeneity.local_steps": [3, 1, 5, 2]},
    "torch_qfedavg": {"framework": "torch", "federation.strategy": "qfedavg"},
    "torch_krum": {"framework": "torch", "federation.strategy": "krum"},
    "torch_multikrum": {"framework": "torch", "federation.strategy": "multikrum",
                        "federation.strategy_args": {"num_nodes_to_select": 2}},
    "torch_bulyan": {"framework": "torch", "federation.strategy": "bulyan"},
    # the torch and torch_dp_sgd cases on the vectorized and pool backends (within the
    # tolerance below of torch.json / torch_dp_sgd.json; pool equal bit for bit)
    "torch_vectorized": {"framework": "torch", "backend": "vectorized"},
    "torch_vectorized_dp_sgd": {"framework": "torch", "backend": "vectorized", **DP},
    "torch_pool": {"framework": "torch", "backend": "pool", "runtime.workers": 2},
    # execution modes (runtime.keras_mode / torch_mode): the same updates, other kernels;
    # Keras eager runs graph's kernels, so keras_eager.json equals keras.json
    "keras_eager": {"framework": "keras", "runtime.keras_mode": "eager"},
    "keras_xla": {"framework": "keras", "runtime.keras_mode": "xla"},
}
#: cases under the slow marker (TorchInductor compiles for about a minute on 2 cores)
SLOW_CASES = {
    "torch_compile": {"framework": "torch", "runtime.torch_mode": "compile"},
}


@pytest.mark.parametrize("case", [*sorted(CASES), *(
    pytest.param(case, marks=pytest.mark.slow) for case in sorted(SLOW_CASES))])
def test_metrics_match_golden(tmp_path, case):
    cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                              small_overrides(tmp_path, **(CASES | SLOW_CASES)[case]))
    result = sandbox.run(cfg)
    produced = json.loads((result.run_dir / "metrics.json").read_text())
    path = GOLDEN / f"{case}.json"
    if os.environ.get("GOLDEN_UPDATE") == "1":
        path.write_text(json.dumps(produced, indent=2) + "\n")
    expected = json.loads(path.read_text())
    assert [row["round"] for row in produced] == [row["round"] for row in expected]
    for got, want in zip(produced, expected, strict=True):
        assert set(got) == set(want), got["round"]
        for key, value in want.items():
            if value is None:
                assert got[key] is None, (got["round"], key)
            else:  # float32 training: tolerate the last bits of another CPU's kernels
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (got["round"], key)


def test_keras_eager_golden_equals_graph():
    """Keras eager runs the graph mode's kernels in the same order: the same numbers."""
    eager = json.loads((GOLDEN / "keras_eager.json").read_text())
    assert eager == json.loads((GOLDEN / "keras.json").read_text())
