"""Run directories: everything one run leaves behind, written all-or-nothing.

A run writes into ``<output.dir>/.<run>.partial`` and is renamed to ``<output.dir>/<run>``
only when every file is in place; a run that raises is renamed ``<run>.failed`` with the
error in ``error.txt``; a run stopped on purpose by a round callback (a pruned tuning
trial) becomes ``<run>.pruned`` with ``stopped.txt``. Both keep ``metrics.json`` and
``ledger.json`` (privacy spent so far). Layout of a finished run::

    config.toml            resolved config (re-runnable with `fedsandbox run`)
    run.json               name, config hash, seed, versions, wall time, final metrics
    metrics.json / .csv    one row per round (round 0 = initial model)
    partition_stats.json   samples and label histogram per client
    partitions.png         the same as stacked bars
    metrics.png            accuracy and loss per round
    weights.npz            final global weights, canonical layout, named arrays
    privacy.json           ledger (every DP mechanism, ε per scope under RDP and PRV),
                           clients' own accountant ε, budget stop, audit results
    privacy.png            ε per round: median and min-max band over clients, federation
    tensorboard/           scalar event files

A run stopped by ``privacy.budget_epsilon`` is a finished run (committed, not
``.failed``): its rows end at the last round within budget and ``run.json`` says where
and why it stopped.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import platform
import shutil
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sandbox import plots
from sandbox.tensorboard import ScalarWriter

if TYPE_CHECKING:
    from sandbox.config import Config
    from sandbox.data import FederatedData
    from sandbox.models import ModelSpec

PRIVACY_COLUMNS = ["eps_client_max", "eps_client_median", "eps_federation"]
METRIC_COLUMNS = [
    "round", "central_accuracy", "central_loss", "train_loss", "eval_accuracy", "eval_loss",
    *PRIVACY_COLUMNS, "round_s",
]
VERSIONED_PACKAGES = [
    "fedsandbox", "flwr", "flwr-datasets", "torch", "tensorflow-cpu", "keras", "numpy",
    "ray", "opacus", "optuna", "keras-tuner", "scikit-learn", "mnist1d", "pydantic",
]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class RunResult:
    """What :func:`sandbox.run` returns: plain Python data, no framework objects."""

    run_dir: Path
    config_hash: str
    rounds: list[dict[str, float]]
    wall_s: float
    final: dict[str, float] = field(default_factory=dict)
    privacy: dict = field(default_factory=dict)
    stopped_early: dict | None = None

    def metric(self, key: str) -> list[float]:
        """One metric over rounds, e.g. ``result.metric("central_accuracy")``."""
        return [row[key] for row in self.rounds if row.get(key) is not None]


class RunDirectory:
    """A results directory that becomes visible only once complete."""

    def __init__(self, cfg: Config) -> None:
        root = Path(cfg.output.dir)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{cfg.name}-{stamp}-{cfg.config_hash()[:8]}"
        name, n = base, 1
        while (root / name).exists() or (root / f".{name}.partial").exists():
            n += 1
            name = f"{base}-{n}"
        self.final_path = root / name
        self.path = root / f".{name}.partial"
        self.path.mkdir(parents=True)

    def write_json(self, name: str, payload: Any) -> None:
        (self.path / name).write_text(json.dumps(payload, indent=2) + "\n")

    def write_metrics_csv(self, rows: list[dict]) -> None:
        with (self.path / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def commit(self) -> Path:
        self.path.rename(self.final_path)
        return self.final_path

    def fail(self, exc: BaseException) -> Path:
        from sandbox.errors import RunPruned

        pruned = isinstance(exc, RunPruned)
        suffix = ".pruned" if pruned else ".failed"
        failed = self.final_path.with_name(self.final_path.name + suffix)
        if pruned:  # stopped on purpose: the reason, not a traceback
            (self.path / "stopped.txt").write_text(f"{exc}\n")
        else:
            (self.path / "error.txt").write_text(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            )
        if failed.exists():
            shutil.rmtree(failed)
        self.path.rename(failed)
        return failed


class RunRecorder:
    """Round observer: timings, progress bar, TensorBoard scalars, per-round rows."""

    def __init__(self, cfg: Config, run_dir: RunDirectory, callbacks=(),
                 prior_ledger=None) -> None:
        self.cfg = cfg
        self.prior_ledger = prior_ledger
        self.run_dir = run_dir
        self.callbacks = list(callbacks)
        self.rows: dict[int, dict[str, float]] = {}
        self.result = None
        self.accounted = None
        self.stopped = None
        self.stop_exception: BaseException | None = None
        self._last = time.perf_counter()
        self._tb = ScalarWriter(run_dir.path / "tensorboard") if cfg.output.tensorboard else None
        self._progress = None
        if cfg.output.progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("acc {task.fields[acc]:.3f}"), TimeElapsedColumn(),
                TimeRemainingColumn(), transient=False,
            )
            label = f"{cfg.name} [{cfg.framework}/{cfg.backend}]"
            self._task = self._progress.add_task(label, total=cfg.rounds, acc=float("nan"))
            self._progress.start()

    def round_finished(self, server_round: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        self.rows[server_round] = {
            "round": server_round,
            "central_accuracy": metrics["accuracy"],
            "central_loss": metrics["loss"],
            **{k: metrics[k] for k in PRIVACY_COLUMNS if k in metrics},
            "round_s": now - self._last,
        }
        self._last = now
        if self._tb:
            self._tb.scalars(server_round, {
                "central/accuracy": metrics["accuracy"], "central/loss": metrics["loss"],
                **{f"privacy/{k}": metrics[k] for k in PRIVACY_COLUMNS if k in metrics},
            })
        if self._progress and server_round > 0:
            self._progress.update(self._task, completed=server_round, acc=metrics["accuracy"])
        for callback in self.callbacks:
            try:
                callback(server_round, dict(self.rows[server_round]))
            except BaseException as exc:
                # Runtimes that run the ServerApp in a thread (Ray) may swallow it.
                self.stop_exception = exc
                raise

    def strategy_started(self, accounted) -> None:
        self.accounted = accounted

    def save_partial(self) -> None:
        """Metrics and ledger so far, into a run that stops without finishing."""
        rows = [self.rows[r] for r in sorted(self.rows)]
        self.run_dir.write_json("metrics.json", rows)
        if self.accounted is not None:
            self.accounted.ledger.data_fingerprint = self.cfg.data_fingerprint()
            self.accounted.ledger.save(self.run_dir.path / "ledger.json")

    def strategy_finished(self, result, accounted=None, stopped=None) -> None:
        self.result = result
        self.accounted = accounted
        self.stopped = stopped

    def stop_progress(self) -> None:
        if self._progress:
            self._progress.stop()

    def finish(self) -> list[dict[str, float]]:
        """Rows per round, centralized metrics merged with the clients' aggregated ones.

        Also writes the clients' metrics to TensorBoard and closes the event file.
        """
        sources = {
            "train_loss": self.result.train_metrics_clientapp,
            "eval_loss": self.result.evaluate_metrics_clientapp,
            "eval_accuracy": self.result.evaluate_metrics_clientapp,
        }
        rows = []
        for server_round in sorted(self.rows):
            row = {key: None for key in METRIC_COLUMNS} | self.rows[server_round]
            for key, per_round in sources.items():
                record = per_round.get(server_round)
                if record is not None and key in record:
                    row[key] = float(record[key])
            rows.append(row)
        if self._tb:
            for row in rows[1:]:
                self._tb.scalars(row["round"], {
                    f"clients/{k}": row[k] for k in ("train_loss", "eval_loss", "eval_accuracy")
                    if row[k] is not None
                })
            self._tb.close()
        return rows

    def final_weights(self, spec: ModelSpec) -> dict[str, np.ndarray]:
        """Final global model as named arrays in the canonical layout."""
        from clients.app import record_to_arrays

        weights = record_to_arrays(spec, self.result.arrays)
        return dict(zip(spec.weight_names(), weights, strict=True))


def privacy_report(cfg: Config, recorder: RunRecorder, audits: dict) -> dict:
    """Contents of ``privacy.json``."""
    accounted = recorder.accounted
    ledger = accounted.ledger
    stop = recorder.stopped
    return {
        "sample_dp": cfg.privacy.sample.enabled,
        "client_dp": cfg.privacy.client.mode,
        "accountant": cfg.privacy.accountant,
        "budget_epsilon": cfg.privacy.budget_epsilon or None,
        "stopped_early": None if stop is None else {
            "before_round": stop.server_round, "scope": stop.scope,
            "projected_epsilon": stop.projected, "reason": str(stop)},
        "ledger": ledger.to_json(),
        "epsilon_per_round": {scope: ledger.per_round(scope, cfg.privacy.accountant)
                              for scope in ledger.scopes},
        "client_reported_epsilon": {str(k): v for k, v in
                                    sorted(accounted.client_reported.items())},
        "audit": audits,
    }


def write_run(
    run_dir: RunDirectory, cfg: Config, data: FederatedData, spec: ModelSpec,
    recorder: RunRecorder, wall_s: float, audits: dict | None = None,
) -> RunResult:
    """Write every file of a finished run and publish the directory."""
    rows = recorder.finish()
    final = {k: v for k, v in rows[-1].items() if v is not None and k != "round_s"}
    stats = data.stats()
    privacy = privacy_report(cfg, recorder, audits or {})
    privacy["ledger"]["data_fingerprint"] = cfg.data_fingerprint()
    summary = {"scopes": privacy["ledger"]["report"]["scopes"],
               "stopped_early": privacy["stopped_early"], "audit": audits or {}}
    (run_dir.path / "config.toml").write_text(cfg.to_toml())
    run_dir.write_json("run.json", {
        "name": cfg.name, "config_hash": cfg.config_hash(), "seed": cfg.seed,
        "framework": cfg.framework, "backend": cfg.backend, "rounds": cfg.rounds,
        "rounds_completed": rows[-1]["round"],
        "wall_s": wall_s, "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "final": final, "privacy": summary, "versions": package_versions(),
    })
    run_dir.write_json("privacy.json", privacy)
    run_dir.write_json("metrics.json", rows)
    run_dir.write_metrics_csv(rows)
    run_dir.write_json("partition_stats.json", stats)
    if cfg.output.save_weights:
        np.savez(run_dir.path / "weights.npz", **recorder.final_weights(spec))
    if cfg.output.plot:
        title = f"{cfg.name}: {cfg.framework}, {cfg.federation.strategy}, {cfg.data.dataset}"
        plots.plot_metrics(rows, run_dir.path / "metrics.png", title)
        plots.plot_partitions(stats, run_dir.path / "partitions.png",
                              f"{cfg.data.dataset}: {cfg.data.partitioner} partition")
        if recorder.accounted.ledger.mechanisms:
            plots.plot_privacy(recorder.accounted.ledger, cfg.privacy.accountant,
                               run_dir.path / "privacy.png", f"{cfg.name}: ε per round")
    path = run_dir.commit()
    return RunResult(path, cfg.config_hash(), rows, wall_s, final, summary,
                     privacy["stopped_early"])
