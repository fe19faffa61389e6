"""Run directories: complete, re-runnable, readable by TensorBoard, never half-written."""

from __future__ import annotations

import csv
import json
import struct

import pytest

import sandbox
from sandbox.engine.tensorboard import crc32c
from tests.conftest import ROOT


def test_run_directory_contents(small):
    cfg = small()
    result = sandbox.run(cfg)
    files = {p.name for p in result.run_dir.iterdir()}
    assert {"config.toml", "run.json", "metrics.json", "metrics.csv", "partition_stats.json",
            "partitions.png", "metrics.png", "weights.npz", "tensorboard", "timings.json"} <= files
    run_info = json.loads((result.run_dir / "run.json").read_text())
    assert run_info["config_hash"] == cfg.config_hash() and run_info["seed"] == cfg.seed
    assert run_info["stop_reason"] == "finished"
    assert result.stop_reason is sandbox.StopReason.FINISHED
    assert run_info["epsilon"] is None and result.epsilon is None
    assert run_info["versions"]["flwr"].startswith("1.42")
    rows = list(csv.DictReader((result.run_dir / "metrics.csv").open()))
    assert len(rows) == cfg.rounds + 1
    timings = json.loads((result.run_dir / "timings.json").read_text())
    assert len(timings["round_s"]) == cfg.rounds + 1 and min(timings["round_s"]) > 0
    rerun = sandbox.load_config(result.run_dir / "config.toml")
    assert rerun == cfg
    assert not list(result.run_dir.parent.glob("*.partial"))


def read_events(path):
    from tensorboard.compat.proto.event_pb2 import Event

    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        payload = data[offset + 12 : offset + 12 + length]
        events.append(Event.FromString(payload))
        offset += 12 + length + 4
    return events


def test_tensorboard_scalars(small):
    result = sandbox.run(small())
    (event_file,) = (result.run_dir / "tensorboard").iterdir()
    tags = {v.tag for e in read_events(event_file) for v in e.summary.value}
    assert {"central/val_accuracy", "central/test_accuracy", "central/val_loss",
            "clients/train_loss", "clients/fed_val_accuracy"} <= tags


def test_crc32c_known_vector():
    assert crc32c(b"123456789") == 0xE3069283


def test_failed_run_is_marked_not_published(small, monkeypatch):
    import sandbox.engine.runtime

    def explode(cfg, observer, resume=None):
        observer.round_finished(0, {"central_val_loss": 1.0, "central_val_accuracy": 0.2,
                                    "central_test_loss": 1.0, "central_test_accuracy": 0.1})
        raise RuntimeError("client crashed")

    monkeypatch.setattr(sandbox.engine.runtime, "run_federation", explode)
    cfg = small()
    with pytest.raises(sandbox.RunFailed, match="client crashed") as caught:
        sandbox.run(cfg)
    out = list((ROOT / cfg.output.dir).iterdir())
    assert len(out) == 1 and out[0].name.endswith(".failed")
    assert caught.value.run_dir == out[0] and isinstance(caught.value.cause, RuntimeError)
    assert caught.value.stop_reason is sandbox.StopReason.FAILED
    assert "client crashed" in (out[0] / "error.txt").read_text()
    info = json.loads((out[0] / "run.json").read_text())
    assert info["stop_reason"] == "failed" and info["error"] == "RuntimeError: client crashed"
    assert info["rounds_completed"] == 0 and (out[0] / "config.toml").is_file()
    assert json.loads((out[0] / "metrics.json").read_text())[0]["central_test_accuracy"] == 0.1


def test_quickstart_reaches_accuracy_in_both_frameworks(tmp_path):
    """The acceptance bar of `nox -s quickstart`: >= 0.85 centralized accuracy."""
    finals = {}
    for framework in ("torch", "keras"):
        cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", {
            "framework": framework, "output.dir": str(tmp_path), "output.progress": False})
        finals[framework] = sandbox.run(cfg).final["central_test_accuracy"]
    assert min(finals.values()) >= 0.85, finals


def test_a_diverged_run_stops_says_so_and_writes_strict_json(tmp_path):
    """Features near float32's limit overflow the first layer: the loss is not finite."""
    import subprocess
    import sys

    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "huge.npz", x=rng.normal(size=(200, 5)) * 1e37,
             y=rng.integers(0, 3, 200))
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", str(ROOT / "configs" / "quickstart.toml"),
         "--quiet", "--set", "data.dataset=npz", "--set", f"data.path={tmp_path / 'huge.npz'}",
         "--set", "model.arch=mlp", "--set", "data.num_clients=2", "--set", "rounds=2",
         "--set", f"output.dir={out}"], capture_output=True, text=True, cwd=ROOT, timeout=300,
        check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "run diverged: non-finite centralized loss at round 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    (run_dir,) = out.iterdir()
    assert run_dir.name.endswith(".failed")

    def no_nan(token):
        raise AssertionError(f"non-JSON literal {token}")

    info = json.loads((run_dir / "run.json").read_text(), parse_constant=no_nan)
    assert info["stop_reason"] == "diverged" and info["rounds_completed"] == 1
    rows = json.loads((run_dir / "metrics.json").read_text(), parse_constant=no_nan)
    assert rows[0]["central_test_loss"] > 0 and rows[1]["central_test_loss"] is None


def test_the_best_round_is_chosen_on_validation_never_on_test():
    from sandbox.core.results import best_row

    rows = [{"round": 0, "central_val_accuracy": 0.9, "central_test_accuracy": 0.9},
            {"round": 1, "central_val_accuracy": 0.5, "central_test_accuracy": 0.8},
            {"round": 2, "central_val_accuracy": 0.7, "central_test_accuracy": 0.6},
            {"round": 3, "central_val_accuracy": 0.7, "central_test_accuracy": 0.7}]
    assert best_row(rows)["round"] == 2  # round 0 (untrained) is never chosen; first on ties
    assert best_row(rows, "fed_val_accuracy") is None
    with pytest.raises(ValueError, match="test metric"):
        best_row(rows, "central_test_accuracy")
