"""kill -9 mid-run, then `fedsandbox run --resume RUN_DIR`: the finished run's metrics
equal an uninterrupted run's byte for byte (torch with DP-SGD, and Keras; backends inline,
vectorized and pool; Keras XLA and torch.compile)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import sandbox
from tests.conftest import ROOT

CASES = {
    # Equal to the uninterrupted run only with reproducible (seeded, not private) noise.
    "torch-dp": {"framework": "torch", "privacy.sample.enabled": True, "privacy.noise": "seeded",
                 "federation.strategy": "fedadam", "federation.fraction_train": 0.5},
    "keras": {"framework": "keras", "federation.strategy": "fedavgm"},
    # seeded Keras clients, a seeded attacker's seeded noise, per-client local steps
    "mixed-attack-heterogeneous": {"framework": "mixed", "attack.fraction": 0.25,
                                   "attack.kind": "gaussian", "attack.noise_std": 0.01,
                                   "heterogeneity.local_steps": [3, 1, 5, 2]},
    # the server control variate (in the strategy) and the clients' c_i (in Context.state)
    "scaffold": {"framework": "torch", "federation.strategy": "scaffold",
                 "federation.fraction_train": 0.5, "train.momentum": 0.0},
    # FedNova and q-FFL keep the round's global model; the robust rules keep nothing
    "fednova-heterogeneous": {"framework": "torch", "federation.strategy": "fednova",
                              "heterogeneity.local_steps": [3, 1, 5, 2]},
    "qfedavg": {"framework": "torch", "federation.strategy": "qfedavg"},
    "krum": {"framework": "torch", "federation.strategy": "krum"},
    "multikrum": {"framework": "torch", "federation.strategy": "multikrum",
                  "federation.strategy_args.num_nodes_to_select": 2},
    "bulyan": {"framework": "torch", "federation.strategy": "bulyan"},
    # node states in the vectorized grid, and in the pool's grid (workers hold none)
    "vectorized-scaffold-dp": {"framework": "torch", "backend": "vectorized",
                               "federation.strategy": "scaffold", "train.momentum": 0.0,
                               "federation.fraction_train": 0.5,
                               "privacy.sample.enabled": True, "privacy.noise": "seeded"},
    "pool-dp": {"framework": "torch", "backend": "pool", "runtime.workers": 2,
                "federation.fraction_train": 0.5, "privacy.sample.enabled": True,
                "privacy.noise": "seeded"},
    # an execution mode other than the framework's default (config.toml keeps it)
    "keras-xla": {"framework": "keras", "runtime.keras_mode": "xla"},
}
#: cases under the slow marker (TorchInductor compiles for about a minute on 2 cores)
SLOW_CASES = {
    "torch-compile-dp": {"framework": "torch", "runtime.torch_mode": "compile",
                         "privacy.sample.enabled": True, "privacy.noise": "seeded"},
}


def overrides(case: str, out) -> dict:
    return {"rounds": 30, "model.arch": "mlp", "model.hidden": [16], "data.num_clients": 4,
            "output.progress": False, "output.plot": False, "output.dir": str(out),
            **(CASES | SLOW_CASES)[case]}


@pytest.mark.parametrize("case", [*sorted(CASES), *(
    pytest.param(case, marks=pytest.mark.slow) for case in sorted(SLOW_CASES))])
def test_kill_9_then_resume_gives_the_uninterrupted_metrics(tmp_path, case):
    killed_out = tmp_path / "killed"
    argv = [sys.executable, "-m", "sandbox", "run", str(ROOT / "configs" / "quickstart.toml"),
            "--quiet", *(a for k, v in overrides(case, killed_out).items()
                         for a in ("--set", f"{k}={json.dumps(v)}"))]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    info = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(killed_out.glob("*.partial/checkpoint.json"))
        if found:
            try:
                info = json.loads(found[0].read_text())
            except ValueError:
                info = None
            if info and info["round"] >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert info is not None and info["round"] >= 2, proc.stderr.read()[-2000:]
    (run_dir,) = killed_out.iterdir()
    assert run_dir.name.endswith(".partial")
    # A kill during a later checkpoint write leaves a torn temporary file: ignored.
    (run_dir / "checkpoint.pkl.tmp").write_bytes(b"torn write")
    resumed = subprocess.run([sys.executable, "-m", "sandbox", "run", "--resume", str(run_dir),
                              "--quiet"], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = ROOT / resumed.stdout.strip().splitlines()[-1]
    assert final.name == run_dir.name.removesuffix(".partial")
    assert not (final / "checkpoint.pkl").exists()
    config = sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                                 overrides(case, tmp_path / "reference"))
    # the resumed run kept every setting (execution modes included)
    assert sandbox.load_config(final / "config.toml").config_hash() == config.config_hash()
    reference = sandbox.run(config)
    for name in ("metrics.json", "participation.json", "privacy.json"):
        assert (final / name).read_text() == (reference.run_dir / name).read_text(), name


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    from sandbox.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "config.toml").write_text((ROOT / "configs" / "quickstart.toml").read_text())
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is a finished run" in capsys.readouterr().err
    stopped = tmp_path / "x.partial"
    stopped.mkdir()
    (stopped / "config.toml").write_text((tmp_path / "config.toml").read_text())
    assert main(["run", "--resume", str(stopped)]) == 2
    assert "no checkpoint.pkl" in capsys.readouterr().err
