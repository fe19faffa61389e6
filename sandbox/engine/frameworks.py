"""Framework comparison: one federation in torch eager, torch.compile, Keras eager, graph and XLA.

:func:`compare_frameworks` (``fedsandbox compare-frameworks CONFIG``) runs the same config
once per execution mode (:data:`MODES`), with and without DP-SGD, each in a fresh process
(:mod:`sandbox.engine.frameworks_worker`), so start-up and compile cost and peak memory
are that mode's alone and each process sizes its thread pools before its first op. Same
seed, so every mode gets the same data split, initial weights, client sample and batch
schedules; DP runs use ``privacy.noise = "seeded"`` so that the modes of one framework
also draw the same noise and Poisson batches (their ε is then not an upper bound: this is
a speed and agreement measurement, not a private release). torch.compile's cache is a
fresh directory per process, so its cost is a cold compile.

Per mode it reports (:mod:`sandbox.engine.frameworks_report` writes the table and plot):

- per-round validation and test accuracy, the final and best validation accuracy;
- client step time: the median over client updates after round 1 of wall time / steps;
- compile (start-up) cost: the wall time of all client updates above their steps × that
  steady step time (tracing, compiling, recompiling for new shapes), plus ``build_s``,
  the time to import the framework and build the trainer;
- peak memory of a client update: RSS high-water mark during the update minus RSS before
  it (:mod:`clients.meter`), for the first update (with compilation) and the largest
  after round 1;
- time to target: wall seconds (build + the run's rounds) until the validation accuracy
  first reaches ``target`` (default: 90 % of the best final validation accuracy over the
  modes of the same DP setting);

with ratios to torch eager of the same DP setting and seed (measured in the same
invocation, so on the same machine under the same load).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sandbox.core.config import Config
from sandbox.core.errors import ConfigError
from sandbox.engine.frameworks_report import summarize, write_report
from sandbox.engine.preflight import check_output_dir, load_config

#: execution modes: name -> (framework, the runtime key that selects it, its value)
MODES: dict[str, tuple[str, str, str]] = {
    "torch-eager": ("torch", "runtime.torch_mode", "eager"),
    "torch-compile": ("torch", "runtime.torch_mode", "compile"),
    "keras-eager": ("keras", "runtime.keras_mode", "eager"),
    "keras-graph": ("keras", "runtime.keras_mode", "graph"),
    "keras-xla": ("keras", "runtime.keras_mode", "xla"),
}
#: what every comparison run sets: in-process clients, no extra outputs
RUN_OVERRIDES = {"backend": "inline", "output.tensorboard": False, "output.plot": False,
                 "output.checkpoint": False, "output.save_weights": False,
                 "output.progress": False}
DP_OVERRIDES = {"privacy.sample.enabled": True, "privacy.noise": "seeded"}


def compare_frameworks(config: str | Path, out_dir: Path | None = None, *,
                       overrides: dict[str, Any] | None = None,
                       dp: tuple[bool, ...] = (False, True),
                       modes: tuple[str, ...] | None = None, seeds: int = 1,
                       target: float | None = None) -> Path:
    """Run ``config`` in every mode × DP setting × seed; write the comparison; its directory.

    Parameters
    ----------
    config : str or Path
        Experiment TOML (its ``framework`` is replaced by each mode's).
    out_dir : Path, optional
        Default ``results/compare_frameworks/<config stem>/``.
    overrides : dict, optional
        Dotted keys applied to every run (``--set``), e.g. ``{"rounds": 5}``.
    dp : tuple of bool
        DP-SGD settings to run (``False``: off; ``True``: ``privacy.sample.enabled`` with
        the config's DP-SGD keys and seeded noise).
    modes : tuple of str, optional
        A subset of :data:`MODES` (default: all).
    seeds : int
        Runs per mode with seeds ``seed, seed + 1, ...``; tables show mean ± 95 % CI.
    target : float, optional
        Validation accuracy for the time-to-target column (default: 90 % of the best
        final validation accuracy over the modes of each DP setting).

    Raises
    ------
    ConfigError
        Unknown mode, bad ``dp``/``seeds``/``target``, or a config that does not validate
        in some mode; nothing is written then.
    """
    out = Path(out_dir) if out_dir is not None else (
        Path("results") / "compare_frameworks" / Path(config).stem)
    plan = plan_runs(config, overrides or {}, dp=dp, modes=modes, seeds=seeds,
                     target=target, out=out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    records = [_run_mode(config, run, out / "runs") for run in plan]
    environment = _environment(plan[0][3], started, load_before)
    write_report(out, summarize(records, target=target), environment,
                 command=_command_line(config, overrides, dp, modes, seeds, target))
    return out


def plan_runs(config: str | Path, overrides: dict[str, Any], *, dp: tuple[bool, ...],
              modes: tuple[str, ...] | None, seeds: int, target: float | None,
              out: Path) -> list[tuple[str, bool, int, Config, dict[str, Any]]]:
    """Validate everything first: ``(mode, dp, seed, Config, overrides)`` per run."""
    chosen = tuple(MODES) if modes is None else tuple(modes)
    unknown = [m for m in chosen if m not in MODES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"compare-frameworks: modes {list(chosen)} are not a list of "
                          f"distinct known modes; allowed: {', '.join(MODES)}")
    if not dp or any(not isinstance(d, bool) for d in dp) or len(set(dp)) != len(dp):
        raise ConfigError(f"compare-frameworks: dp = {dp!r}; allowed: (False,), (True,) "
                          "or (False, True)")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= 100:
        raise ConfigError(f"compare-frameworks: seeds = {seeds!r}; allowed: 1..100")
    if target is not None and not 0 < target <= 1:
        raise ConfigError(f"compare-frameworks: target = {target!r}; allowed: 0 < target <= 1 "
                          "(a validation accuracy)")
    check_output_dir(out)
    base = load_config(config, overrides)
    runs = []
    for private in dp:
        for mode in chosen:
            framework, key, value = MODES[mode]
            for index in range(seeds):
                run_overrides = {**overrides, **RUN_OVERRIDES, "framework": framework,
                                 key: value, "seed": base.seed + index,
                                 "runtime.server_threads": base.runtime.threads_per_client,
                                 "output.dir": str(out / "runs"),
                                 "name": f"{mode}-{'dp' if private else 'nodp'}-s{index}",
                                 **(DP_OVERRIDES if private else
                                    {"privacy.sample.enabled": False})}
                cfg = load_config(config, run_overrides)
                runs.append((mode, private, cfg.seed, cfg, run_overrides))
    return runs


def _run_mode(config: str | Path, run: tuple, runs_dir: Path) -> dict[str, Any]:
    """One mode × DP × seed in a fresh process; its measurements (or why unavailable)."""
    import time

    mode, private, seed, cfg, run_overrides = run
    name = run_overrides["name"]
    threads = str(cfg.runtime.threads_per_client)
    with tempfile.TemporaryDirectory(prefix="fedsandbox-compare-") as scratch:
        request = Path(scratch) / "request.json"
        result = Path(scratch) / "result.json"
        request.write_text(json.dumps({"config": str(config), "overrides": run_overrides,
                                       "result": str(result)}))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "TORCHINDUCTOR_CACHE_DIR": str(Path(scratch) / "inductor"),
               "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}
        log = runs_dir / f"{name}.log"
        started = time.perf_counter()
        with log.open("w") as stream:
            done = subprocess.run([sys.executable, "-m", "sandbox.engine.frameworks_worker",
                                   str(request)], env=env, stdout=stream, stderr=stream,
                                  check=False)
        wall = time.perf_counter() - started
        outcome = (json.loads(result.read_text()) if result.is_file() else
                   {"status": "unavailable",
                    "reason": f"worker exited with code {done.returncode} (see {log})"})
    return {"mode": mode, "dp": private, "seed": seed, "process_wall_s": wall, **outcome}


def _environment(cfg: Config, started: dt.datetime, load_before: tuple) -> dict[str, Any]:
    from sandbox.core.results import package_versions

    return {"date": started.isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "threads_per_client": cfg.runtime.threads_per_client,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "versions": package_versions()}


def cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _command_line(config, overrides, dp, modes, seeds, target) -> str:
    parts = ["fedsandbox compare-frameworks", str(config)]
    parts += [f"--set {k}={json.dumps(v) if not isinstance(v, str) else v}"
              for k, v in (overrides or {}).items()]
    if tuple(dp) != (False, True):
        parts.append("--dp-only" if dp == (True,) else "--no-dp")
    if modes is not None:
        parts.append(f"--modes {','.join(modes)}")
    if seeds != 1:
        parts.append(f"--seeds {seeds}")
    if target is not None:
        parts.append(f"--target {target}")
    return " ".join(parts)
