"""Execution modes (runtime.torch_mode / keras_mode) and `fedsandbox compare-frameworks`.

Same initial weights and batches in every mode: the Keras modes train to the same weights
(float32 rounding apart), torch.compile to eager's, and the comparison's per-round
validation accuracy agrees between paired modes. A mode that cannot run is reported as
unavailable with its reason, never replaced by another one. (That each mode repeats its
metrics alone and after other runs, at 1 and 2 threads: tests/test_determinism.py.)
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sandbox.cli import main
from sandbox.core.errors import ConfigError
from sandbox.engine.frameworks import MODES, compare_frameworks
from sandbox.engine.frameworks_report import markdown, summarize
from sandbox.engine.frameworks_worker import _failure_reason
from tests.conftest import ROOT

QUICK = ROOT / "configs" / "quickstart.toml"
#: a federation small enough for a subprocess per mode in the default suite
TINY = {"rounds": 2, "data.num_clients": 3, "train.local_epochs": 1, "model.hidden": [16],
        "model.channels": [4]}
#: largest per-round |Δ validation accuracy| allowed between a compiled mode (torch.compile,
#: XLA) and its eager/graph twin, or between the frameworks without DP: kernels round
#: differently (on the full quickstart, 20 rounds: at most 2 of 144 validation examples)
COMPILED_TOLERANCE = 0.02
#: weights after one local update, Keras eager / XLA vs graph (measured 1.2e-7)
KERAS_WEIGHT_TOLERANCE = 1e-5


def _one_update(framework: str, mode: str, private: bool) -> list[np.ndarray]:
    from clients.schedule import batch_schedule, client_randomness, poisson_schedule
    from clients.trainer import _build
    from sandbox.core.data import load_federated_data
    from sandbox.core.privacy import sample_dp_plan
    from sandbox.core.wire import model_spec_for
    from sandbox.engine.preflight import load_config

    cfg = load_config(QUICK, {**TINY, "privacy.sample.enabled": private,
                              "privacy.noise": "seeded"})
    client = load_federated_data(cfg.data, cfg.seed).clients[0]
    spec = model_spec_for(cfg)
    trainer = _build(framework, spec, cfg.train, private=private, mode=mode)
    trainer.set_weights(spec.init_weights(0))
    rng, seed = client_randomness(cfg.seed, 1, 0)
    n = len(client.y_train)
    plan = sample_dp_plan(cfg, n) if private else None
    schedule = (poisson_schedule(n, plan.sample_rate, plan.steps, rng) if private
                else batch_schedule(n, cfg.train, rng))
    trainer.fit(client.x_train, client.y_train, schedule, seed=seed, dp=plan)
    return trainer.get_weights()


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp_sgd"])
def test_keras_modes_train_to_the_same_weights(private):
    graph = _one_update("keras", "graph", private)
    assert _max_diff(_one_update("keras", "eager", private), graph) == 0.0
    assert _max_diff(_one_update("keras", "xla", private), graph) <= KERAS_WEIGHT_TOLERANCE


@pytest.mark.slow  # TorchInductor compiles for about a minute on a 2-core machine
@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp_sgd"])
def test_torch_compile_trains_to_eager_weights(private):
    eager = _one_update("torch", "eager", private)
    assert _max_diff(_one_update("torch", "compile", private), eager) <= 1e-5


def test_cli_writes_table_plot_and_agreement(tmp_path, capsys):
    out = tmp_path / "cmp"
    sets = [a for key, value in TINY.items()
            for a in ("--set", f"{key}={json.dumps(value)}")]
    code = main(["compare-frameworks", str(QUICK), *sets, "--modes",
                 "torch-eager,keras-graph", "--no-dp", "--out", str(out)])
    assert code == 0
    assert str(out) in capsys.readouterr().out
    for name in ("frameworks.csv", "frameworks.json", "frameworks.md", "frameworks.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "frameworks.csv").open()))
    assert [(r["mode"], r["dp"], r["status"]) for r in rows] == [
        ("torch-eager", "False", "ok"), ("keras-graph", "False", "ok")]
    report = json.loads((out / "frameworks.json").read_text())
    (agreement,) = report["agreement"]
    assert agreement["modes"] == "keras-graph vs torch-eager"
    assert agreement["max_abs_val_diff"] <= COMPILED_TOLERANCE  # same batches and weights
    table = (out / "frameworks.md").read_text()
    assert "CPU:" in table and "threads_per_client = 1" in table
    assert "single seed" in table
    for run in report["runs"]:
        assert all(u["peak_rss_kib"] >= 0 and u["steps"] >= 1 for u in run["updates"])


@pytest.mark.slow  # every mode, with and without DP: ten processes, torch.compile twice
def test_every_mode_runs_or_says_why_and_paired_modes_agree(tmp_path):
    out = compare_frameworks(QUICK, tmp_path / "all", overrides=TINY)
    report = json.loads((out / "frameworks.json").read_text())
    assert {(r["mode"], r["dp"]) for r in report["runs"]} == {
        (m, d) for m in MODES for d in (False, True)}
    for run in report["runs"]:
        assert run["status"] == "ok" or run["reason"], run
    for row in report["agreement"]:
        if row["modes"] == "keras-graph vs torch-eager" and row["dp"]:
            continue  # each framework draws its own seeded DP noise
        exact = row["modes"] == "keras-eager vs keras-graph"  # the same kernels
        assert row["max_abs_val_diff"] <= (0.0 if exact else COMPILED_TOLERANCE), row


@pytest.mark.slow
def test_torch_compile_without_a_compiler_is_unavailable_not_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    out = compare_frameworks(QUICK, tmp_path / "cmp", overrides=TINY, dp=(False,),
                             modes=("torch-compile",))
    (run,) = json.loads((out / "frameworks.json").read_text())["runs"]
    assert run["status"] == "unavailable" and run["reason"]
    assert "unavailable: " in (out / "frameworks.md").read_text()


def _record(mode: str, vals: list[float], *, dp: bool = False) -> dict:
    rounds = [{"round": i, "val": v, "test": v, "clients": 0 if i == 0 else 2}
              for i, v in enumerate(vals)]
    updates = [{"seconds": 0.5 if i == 0 else 0.1, "steps": 10, "examples": 100,
                "peak_rss_kib": 4096, "rss_method": "test"} for i in range(2 * len(vals))]
    return {"mode": mode, "dp": dp, "seed": 0, "status": "ok", "rounds": rounds,
            "round_seconds": [1.0] * len(vals), "updates": updates, "build_s": 2.0,
            "process_peak_rss_kib": 10240, "process_wall_s": 9.0}


def test_summary_ratios_target_and_unavailable_rows():
    records = [_record("torch-eager", [0.1, 0.5, 0.9]), _record("keras-graph", [0.1, 0.9, 0.9]),
               {"mode": "torch-compile", "dp": False, "seed": 0, "status": "unavailable",
                "reason": "InductorError: no C++ compiler", "process_wall_s": 3.0}]
    report = summarize(records, target=None)
    assert report["targets"] == {"nodp": pytest.approx(0.81)}
    by_mode = {e["mode"]: e for e in report["summary"]}
    assert by_mode["keras-graph"]["rounds_to_target"]["mean"] == 1
    assert by_mode["torch-eager"]["rounds_to_target"]["mean"] == 2
    assert by_mode["keras-graph"]["time_to_target_ratio"]["mean"] == pytest.approx(4 / 5)
    assert by_mode["keras-graph"]["step_ratio"]["mean"] == pytest.approx(1.0)
    assert by_mode["torch-compile"]["unavailable"].startswith("InductorError")
    report = {"command": "c", "environment": {
        "date": "d", "cpu": "cpu", "cpu_count": 2, "threads_per_client": 1,
        "load_average_before": [1, 1, 1], "load_average_after": [1, 1, 1]}, **report}
    assert "unavailable: InductorError: no C++ compiler" in markdown(report)


def test_failed_clients_make_a_mode_unavailable():
    rows = [{"round": 0, "failures": None},
            {"round": 1, "failures": {"train": {"2": "BackendCompilerFailed: boom"}}}]
    assert "BackendCompilerFailed: boom" in _failure_reason(rows)
    assert _failure_reason(rows[:1]) is None


@pytest.mark.parametrize("kwargs", [{"modes": ("torch-eager", "jax")}, {"modes": ()},
                                    {"dp": ()}, {"dp": (True, True)}, {"seeds": 0},
                                    {"target": 0.0}], ids=str)
def test_bad_arguments_raise_before_anything_is_written(kwargs, tmp_path):
    with pytest.raises(ConfigError):
        compare_frameworks(QUICK, tmp_path / "cmp", overrides=TINY, **kwargs)
    assert not (tmp_path / "cmp").exists()
