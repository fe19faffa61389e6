"""The ``deployment`` backend: the config runs under ``flwr run`` on Flower's Deployment Engine.

The ServerApp of a deployment runs in a process Flower starts (the SuperLink's SuperExec),
not in ours, so it records the run itself: ``fedsandbox run`` creates the run directory
(``<run>.partial`` with ``config.toml``), sends the resolved config's TOML text and that
directory in the run config of the sandbox's Flower App (:mod:`sandbox.engine.flower_app`),
and the ServerApp runs the engine's usual path into it
(:func:`sandbox.engine.api.run_on_grid`: recorder, checkpoints, results files, plots).
This process waits for ``flwr run --stream`` and reads the finished directory back as the
usual :class:`~sandbox.core.results.RunResult`.

With ``deployment.superlink`` empty the run starts its own deployment on 127.0.0.1
(:class:`~sandbox.engine.runtime.superlink.LocalDeployment`: one SuperLink and one
SuperNode per partition, TLS with certificates made for the run when
``deployment.tls``) and stops every process of it afterwards. Otherwise it submits to the
SuperLink at that address (TLS with ``deployment.root_certificates``, or insecure).
Flower's own files (config file, installed apps, logs) live under ``.flwr/`` of the app
directory while the run lasts (``FLWR_HOME``), never in the user's ``~/.flwr``; a failed
run keeps the processes' logs in ``<run>.failed/deployment-logs/``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.core.errors import RunFailed, SandboxError
from sandbox.core.results import BudgetStop, RunResult, StopReason
from sandbox.core.tomlio import dict_to_toml
from sandbox.engine.runtime.superlink import LocalDeployment, flower_env, make_certificates

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.engine.rundir import RunDirectory

#: The Flower App's directory: its ``pyproject.toml`` has the ``[tool.flwr.app]`` tables.
APP_DIR = Path(__file__).resolve().parents[3]
CONNECTION = "fedsandbox"


def run_deployment(cfg: Config, run_dir: RunDirectory) -> RunResult:
    """Run ``cfg`` under ``flwr run`` into ``run_dir``; the finished run's result.

    Raises
    ------
    RunFailed
        The run stopped without finishing (its directory is ``<run>.failed`` etc.).
    """
    if not (APP_DIR / "pyproject.toml").is_file():
        raise SandboxError(f"backend 'deployment' needs the fedsandbox source tree (the "
                           f"Flower App's pyproject.toml); {APP_DIR} has none")
    (APP_DIR / ".flwr").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=APP_DIR / ".flwr"))
    home, logs = work / "home", work / "logs"
    try:
        try:
            if cfg.deployment.superlink:
                connection = {"address": cfg.deployment.superlink}
                if cfg.deployment.root_certificates:
                    connection["root-certificates"] = str(
                        Path(cfg.deployment.root_certificates).resolve())
                else:
                    connection["insecure"] = not cfg.deployment.tls
                code = _flwr_run(cfg, run_dir, home, connection, logs)
            else:
                certs = make_certificates(work / "tls") if cfg.deployment.tls else None
                with LocalDeployment(cfg.data.num_clients, home=home, log_dir=logs,
                                     certificates=certs) as local:
                    connection = {"address": local.address}
                    connection |= ({"root-certificates": str(certs.ca)} if certs
                                   else {"insecure": True})
                    code = _flwr_run(cfg, run_dir, home, connection, logs)
        except BaseException as exc:
            if run_dir.path.is_dir():  # the ServerApp did not get to record it
                _keep_logs(logs, run_dir.path)
                failed = run_dir.fail(cfg, exc, _reason(exc), rows=[], ledger=None)
                if isinstance(exc, Exception):
                    raise RunFailed(exc, run_dir=failed, stop_reason=_reason(exc)) from exc
                exc.run_dir = failed  # KeyboardInterrupt: the CLI names it, as on inline
                exc.add_note(f"partial results kept in {failed}")
            raise
        if run_dir.path.is_dir():  # flwr run ended, the ServerApp never finished the run
            _keep_logs(logs, run_dir.path)
            exc = RuntimeError(f"`flwr run` exited with code {code} before the ServerApp "
                               f"finished the run; Flower's logs: "
                               f"{run_dir.path.name}/deployment-logs/")
            failed = run_dir.fail(cfg, exc, StopReason.FAILED, rows=[], ledger=None)
            raise RunFailed(exc, run_dir=failed, stop_reason=StopReason.FAILED)
        return read_result(run_dir.final_path, cfg, logs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _reason(exc: BaseException) -> StopReason:
    return StopReason.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else StopReason.FAILED


def _flwr_run(cfg: Config, run_dir: RunDirectory, home: Path, connection: dict,
              logs: Path) -> int:
    """``flwr run APP_DIR fedsandbox --stream`` with the run config; its exit code."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(dict_to_toml(
        {"superlink": {"default": CONNECTION, CONNECTION: connection}}))
    run_config = home.parent / "run_config.toml"
    run_config.write_text(dict_to_toml({"config": cfg.to_toml(),
                                        "run-dir": str(run_dir.path.resolve())}))
    flwr = Path(sys.executable).with_name("flwr")
    env = flower_env(home)
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "flwr-run.log").open("wb") as log:
        return subprocess.run([str(flwr), "run", str(APP_DIR), CONNECTION, "--run-config",
                               str(run_config), "--stream"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              check=False).returncode


def _keep_logs(logs: Path, run_path: Path) -> None:
    if logs.is_dir():
        shutil.copytree(logs, run_path / "deployment-logs", dirs_exist_ok=True)


def read_result(path: Path, cfg: Config, logs: Path) -> RunResult:
    """The :class:`RunResult` of the run the ServerApp wrote into ``path``.

    Raises
    ------
    RunFailed
        The ServerApp stopped the run (``<run>.failed``, ``.pruned``, ``.interrupted``).
    """
    if not path.is_dir():
        stopped = next((p for p in (path.with_name(path.name + s) for s in
                                    (".failed", ".interrupted", ".pruned")) if p.is_dir()),
                       None)
        if stopped is None:
            raise SandboxError(f"the deployment left no run directory for {path}")
        _keep_logs(logs, stopped)
        info = json.loads((stopped / "run.json").read_text())
        raise RunFailed(RuntimeError(info.get("error", "the ServerApp stopped the run")),
                        run_dir=stopped, stop_reason=StopReason(info["stop_reason"]))
    info = json.loads((path / "run.json").read_text())
    timings = json.loads((path / "timings.json").read_text())
    stop = info["privacy"]["stopped_early"]
    return RunResult(path, cfg.config_hash(), json.loads((path / "metrics.json").read_text()),
                     info["wall_s"], info["final"], info["privacy"], info["epsilon"],
                     StopReason(info["stop_reason"]), None if stop is None else BudgetStop(**stop),
                     timings["round_s"], info["epsilon_caveats"])
