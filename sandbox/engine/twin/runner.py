"""Run an experiment in the sandbox and in TensorFlow Federated, and compare the two.

:func:`run_twin` exports the experiment (:mod:`sandbox.engine.twin.export`), runs the
TFF side in its own environment as a subprocess (``tff_side.py``; the two environments
share files only), runs the sandbox's own federation with :func:`sandbox.engine.api.run`
and writes both sides and their comparison into ``<run dir>/twin/``::

    twin/inputs/        the exported experiment (what both sides trained on)
    twin/tff/           TFF's metrics.json, weights_per_round.npz, run.json, log.txt
    twin/sandbox/       our metrics.json (copy of the run's) and weights_per_round.npz
    twin/comparison.*   see :mod:`sandbox.engine.twin.compare`
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clients import framework_threads, get_evaluator
from sandbox.core import wire
from sandbox.core.errors import SandboxError
from sandbox.core.experiment import load_experiment_data
from sandbox.engine.api import run
from sandbox.engine.preflight import load_config
from sandbox.engine.twin.compare import compare_runs, load_round_weights, write_comparison
from sandbox.engine.twin.export import check_twinnable, export_experiment, save_npz

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.results import RunResult

#: The repository root (the package is installed in editable mode: ``nox`` does so).
ROOT = Path(__file__).resolve().parents[3]
#: Set to the python of another TFF environment to use that one instead.
TFF_PYTHON_VARIABLE = "FEDSANDBOX_TFF_PYTHON"
TFF_ENV = ROOT / ".nox" / "tff-env"
BUILD_COMMAND = "nox -s tff"
TFF_SCRIPT = Path(__file__).with_name("tff_side.py")
#: Why the two sides are not expected to agree, written into comparison.json.
KNOWN_DIFFERENCES = {
    "fedprox": "TFF 0.87's proximal client work adds mu * (w_start - w) to each gradient "
               "(templates/proximal_client_work.py), the opposite sign of the gradient "
               "mu * (w - w_start) of Li et al.'s (mu/2)||w - w_start||^2 that the sandbox's "
               "trainers use: TFF's FedProx pulls away from the round's start, so weights "
               "and curves differ for mu > 0 (docs/twins.md)",
    "client_dp": "both sides add their own Gaussian noise (numpy generators seeded by the "
                 "run vs TF Privacy's TF random ops), so weights differ; compare accuracy "
                 "across seeds and ε (same mechanism, same sampling, same rounds)",
}


class TwinError(SandboxError):
    """The TFF environment is missing, or the TFF side or the comparison failed."""


def tff_python() -> Path:
    """The python of TFF's environment; a :class:`TwinError` naming the build command."""
    override = os.environ.get(TFF_PYTHON_VARIABLE)
    if override:
        if not Path(override).is_file():
            raise TwinError(f"{TFF_PYTHON_VARIABLE}={override} is not a file")
        return Path(override)
    python = TFF_ENV / "bin" / "python"
    # nox writes the stamp only after TFF imported: an interrupted build has none.
    if not (python.is_file() and (TFF_ENV / ".tff-stamp").is_file()):
        raise TwinError(f"the TensorFlow Federated environment {TFF_ENV} is missing or "
                        f"incomplete; build it with `{BUILD_COMMAND}` (about 2 minutes)")
    return python


def run_twin(config_path: str | Path, overrides: list[str] | None = None) -> Path:
    """Run ``config_path`` in the sandbox and in TFF; return the ``twin/`` directory.

    Parameters
    ----------
    config_path : str or Path
        Experiment TOML (FedAvg or FedProx, Keras or torch, client DP off or
        ``server_fixed``; see :func:`sandbox.engine.twin.export.check_twinnable`).
    overrides : list of "key=value" strings, optional
        As ``fedsandbox run --set``.

    Raises
    ------
    ConfigError
        The config has no TFF twin (before anything runs).
    TwinError
        TFF's environment is missing (before anything runs), or the TFF side failed.
    """
    cfg = load_config(config_path, overrides)
    check_twinnable(cfg)
    python = tff_python()
    output = Path(cfg.output.dir)
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".twin-", dir=output))
    try:
        export_experiment(cfg, staging / "inputs")
        # TFF first: its failures surface before the sandbox run's directory exists.
        run_tff_side(python, staging / "inputs", staging / "tff")
        result, weights = run_sandbox_side(cfg)
        twin_dir = result.run_dir / "twin"
        shutil.move(staging, twin_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_sandbox_side(twin_dir / "sandbox", result, weights)
    _check_participation(result, twin_dir / "inputs" / "experiment.json")
    comparison = compare_runs(result.rounds,
                              json.loads((twin_dir / "tff" / "metrics.json").read_text()),
                              weights, load_round_weights(twin_dir / "tff" /
                                                          "weights_per_round.npz"))
    if cfg.privacy.client.mode != "off":
        comparison["privacy"] = privacy_comparison(cfg, result, twin_dir / "tff" / "run.json")
    comparison["notes"] = known_differences(cfg)
    write_comparison(twin_dir, comparison, f"{cfg.name}: sandbox ({cfg.framework}) vs "
                                           "TensorFlow Federated")
    return twin_dir


def known_differences(cfg: Config) -> list[str]:
    """The entries of :data:`KNOWN_DIFFERENCES` that apply to ``cfg``."""
    notes = []
    if cfg.federation.strategy == "fedprox" and cfg.federation.strategy_args.get("proximal_mu"):
        notes.append(KNOWN_DIFFERENCES["fedprox"])
    if cfg.privacy.client.mode != "off":
        notes.append(KNOWN_DIFFERENCES["client_dp"])
    return notes


def run_tff_side(python: Path, inputs: Path, out: Path) -> None:
    """``tff_side.py inputs out`` in TFF's environment; its output goes to ``out/log.txt``."""
    out.mkdir(parents=True)
    # A clean environment: nothing of the main venv leaks in; CPU only, like the sandbox's
    # tensorflow-cpu, so both sides run the same kernels.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", ""),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "-1",
           "PYTHONHASHSEED": "0"}
    with (out / "log.txt").open("w") as log:
        code = subprocess.run([str(python), str(TFF_SCRIPT), str(inputs), str(out)],
                              stdout=log, stderr=subprocess.STDOUT, env=env,
                              check=False).returncode
    if code:
        tail = "".join((out / "log.txt").read_text().splitlines(keepends=True)[-15:])
        raise TwinError(f"the TFF side exited with code {code}; last lines:\n{tail}")


def run_sandbox_side(cfg: Config) -> tuple[RunResult, dict[int, dict[str, np.ndarray]]]:
    """``sandbox.run(cfg)`` and the global weights after round 0 and every round."""
    capture = WeightCapture(cfg)
    result = run(cfg, callbacks=[capture])
    final = dict(np.load(result.run_dir / "weights.npz")) if cfg.output.save_weights else None
    capture.check(final)
    return result, capture.weights


class WeightCapture:
    """A round callback that keeps the global model of every round.

    The run API hands callbacks the round's metrics, not the model. The server evaluates
    the global model with the per-process evaluator of ``clients.get_evaluator`` just
    before the callbacks run, so that evaluator holds the round's weights. That is an
    order of calls, not a promise of the API: every captured model is re-evaluated and
    must reproduce the row's validation loss and accuracy exactly, and the last one must
    equal ``weights.npz``, or :meth:`check` raises.
    """

    def __init__(self, cfg: Config) -> None:
        self.spec = wire.model_spec_for(cfg)
        self.data = load_experiment_data(cfg)
        with framework_threads(cfg.framework, cfg.runtime.server_threads):
            self.evaluator = get_evaluator(cfg.framework, self.spec, cfg.train)
        self.weights: dict[int, dict[str, np.ndarray]] = {}
        self.mismatched: list[int] = []

    def __call__(self, server_round: int, row: dict) -> None:
        arrays = [np.array(w, copy=True) for w in self.evaluator.get_weights()]
        loss, accuracy = self.evaluator.evaluate(self.data.x_val, self.data.y_val)
        if (loss, accuracy) != (row["central_val_loss"], row["central_val_accuracy"]):
            self.mismatched.append(server_round)
        self.weights[server_round] = dict(zip(self.spec.weight_names(), arrays, strict=True))

    def check(self, final: dict[str, np.ndarray] | None) -> None:
        last = self.weights[max(self.weights)]
        if final is not None and any(not np.array_equal(last[k], final[k]) for k in final):
            self.mismatched.append(max(self.weights))
        if self.mismatched:
            raise TwinError(f"could not capture the global model of round(s) "
                            f"{sorted(set(self.mismatched))}: the evaluator no longer holds "
                            "the evaluated weights when round callbacks run")


def _write_sandbox_side(out: Path, result: RunResult,
                        weights: dict[int, dict[str, np.ndarray]]) -> None:
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps(result.rounds, indent=2) + "\n")
    save_npz(out / "weights_per_round.npz", {
        f"round{r}.{name}": array for r, layers in weights.items()
        for name, array in layers.items()})


def _check_participation(result: RunResult, experiment_json: Path) -> None:
    """The clients the server chose each round are the ones the export gave TFF."""
    exported = json.loads(experiment_json.read_text())["participation"]
    actual = json.loads((result.run_dir / "participation.json").read_text())
    differing = [r for r, pids in exported.items() if actual[r]["train"] != pids]
    if differing:
        raise TwinError(f"the sandbox trained other clients than the export in round(s) "
                        f"{differing}: sandbox.core.sampling and the server disagree")


def privacy_comparison(cfg: Config, result: RunResult, tff_run_json: Path) -> dict:
    """ε of both sides at the same δ, clip, noise multiplier, sampling and rounds."""
    tff = json.loads(tff_run_json.read_text())["epsilon"]
    dp = cfg.privacy.client
    return {
        "delta": cfg.privacy.delta, "clipping_norm": dp.clipping_norm,
        "noise_multiplier": dp.noise_multiplier, "rounds": cfg.rounds,
        "sample_rate": cfg.federation.fraction_train,
        "sandbox": {"accountant": cfg.privacy.accountant, "epsilon": result.epsilon,
                    "scopes": result.privacy.get("scopes", {})},
        "tff": {"accountants": tff["accountants"], "event": tff["event"],
                "epsilon_rdp": tff["per_round"][-1]["rdp"],
                "epsilon_pld": tff["per_round"][-1]["pld"]},
    }
