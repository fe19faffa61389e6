"""Run directories: everything one run leaves behind, written all-or-nothing.

A run writes into ``<output.dir>/<run>.partial`` (its ``config.toml`` first) and is
renamed to ``<output.dir>/<run>`` only when every file is in place; a run that raises is
renamed ``<run>.failed`` with the error in ``error.txt``; one stopped by SIGINT/SIGTERM
becomes ``<run>.interrupted``; one stopped on purpose by a round callback (a pruned tuning
trial) becomes ``<run>.pruned`` with ``stopped.txt``. All keep ``config.toml``,
``metrics.json`` and ``ledger.json`` (privacy spent so far) and a ``run.json`` with the
``stop_reason`` and the error. The files of a finished run are listed in
:mod:`sandbox.core.results`.

A run stopped by ``privacy.budget_epsilon`` is a finished run (committed, not
``.failed``): its rows end at the last round within budget and ``run.json`` says where
and why it stopped (``stop_reason = "budget"``).
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import math
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sandbox.core.assignment import keras_partitions, malicious_partitions
from sandbox.core.errors import SandboxError
from sandbox.core.privacy import PrivacyLedger
from sandbox.core.privacy.assumptions import accounting_assumptions, epsilon_caveats
from sandbox.core.results import (
    JSON_COLUMNS,
    RunResult,
    StopReason,
    package_versions,
    run_epsilon,
)
from sandbox.engine import plots
from sandbox.engine.checkpoint import CHECKPOINT, CHECKPOINT_INFO
from sandbox.engine.recorder import RunRecord
from sandbox.engine.replies import metric_columns

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.data import FederatedData


#: Suffixes a results directory can end with; ``""`` is a finished run.
STATE_SUFFIXES = ("", ".partial", ".failed", ".pruned", ".interrupted")


def reserve_directory(root: Path, base: str) -> tuple[Path, Path]:
    """Create ``<root>/<base>[-n].partial`` atomically; return it and its final path.

    ``mkdir`` either creates the directory or fails, so two processes (concurrent runs,
    sweeps, study workers) never get the same name; a name is skipped while any
    directory of that name exists in any state, so no run renames onto another's.
    """
    root.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        name = base if n == 1 else f"{base}-{n}"
        if any((root / f"{name}{suffix}").exists() for suffix in STATE_SUFFIXES):
            continue
        try:
            (root / f"{name}.partial").mkdir()
        except FileExistsError:
            continue
        return root / f"{name}.partial", root / name
    raise AssertionError("unreachable")


class RunDirectory:
    """A results directory, ``<run>.partial`` while it runs, ``<run>`` once complete.

    A run killed outright (kill -9) leaves ``<run>.partial``; ``fedsandbox ls`` shows it.
    """

    def __init__(self, cfg: Config) -> None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{cfg.name}-{stamp}-{cfg.config_hash()[:8]}"
        self.path, self.final_path = reserve_directory(Path(cfg.output.dir), base)
        # What the run is, from the start: a killed run's directory still says.
        (self.path / "config.toml").write_text(cfg.to_toml())

    @classmethod
    def reopen(cls, path: Path) -> RunDirectory:
        """A stopped run's directory, back to ``<run>.partial`` to continue in it."""
        name = path.name
        for suffix in STATE_SUFFIXES[1:]:
            name = name.removesuffix(suffix)
        directory = cls.__new__(cls)
        directory.final_path = path.with_name(name)
        directory.path = path.with_name(f"{name}.partial")
        if directory.final_path.exists():
            raise SandboxError(f"--resume: {directory.final_path} already exists")
        if path != directory.path:
            path.rename(directory.path)
        for stale in ("error.txt", "stopped.txt", "run.json", "ledger.json"):
            (directory.path / stale).unlink(missing_ok=True)
        return directory

    def write_json(self, name: str, payload: Any) -> None:
        """Strict JSON: non-finite numbers (a diverged round's loss) are written as null."""
        text = json.dumps(finite_or_null(payload), indent=2, allow_nan=False)
        (self.path / name).write_text(text + "\n")

    def write_metrics_csv(self, rows: list[dict], columns: list[str]) -> None:
        with (self.path / "metrics.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:  # failures, partition lists, compute as one JSON cell each
                writer.writerow(row | {key: "" if row.get(key) in (None, {}) else
                                       json.dumps(row[key]) for key in JSON_COLUMNS
                                       if key in columns})

    def commit(self) -> Path:
        self.path.rename(self.final_path)
        return self.final_path

    def fail(self, cfg: Config, exc: BaseException, reason: StopReason, *,
             rows: list[dict], ledger: PrivacyLedger | None) -> Path:
        """Keep what a run that stopped without finishing has: ``<run>.failed|.pruned``.

        Writes ``config.toml``, ``metrics.json`` and ``ledger.json`` so far, ``run.json``
        with the ``stop_reason`` and the error, and ``error.txt`` (the traceback) or, for
        a run stopped on purpose, ``stopped.txt`` (the reason).
        """
        pruned = reason is StopReason.PRUNED
        (self.path / "config.toml").write_text(cfg.to_toml())
        self.write_json("metrics.json", rows)
        if ledger is not None:
            PrivacyLedger.for_config(cfg, ledger.mechanisms).save(self.path / "ledger.json")
        self.write_json("run.json", {
            **run_header(cfg), "rounds_completed": rows[-1]["round"] if rows else None,
            "stop_reason": reason.value, "error": f"{type(exc).__name__}: {exc}",
        })
        if pruned:  # stopped on purpose: the reason, not a traceback
            (self.path / "stopped.txt").write_text(f"{exc}\n")
        else:
            (self.path / "error.txt").write_text(
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        suffix = {StopReason.PRUNED: ".pruned", StopReason.INTERRUPTED: ".interrupted"}
        failed = self.final_path.with_name(self.final_path.name + suffix.get(reason, ".failed"))
        self.path.rename(failed)  # the name is ours: reserved with the .partial directory
        return failed


def privacy_report(cfg: Config, record: RunRecord, audits: dict) -> dict:
    """Contents of ``privacy.json``.

    The saved ledger records the run's noise source and sampling on every mechanism
    (:meth:`PrivacyLedger.for_config`), so a later composition with other runs can tell
    whether its ε is an upper bound.
    """
    ledger = PrivacyLedger.for_config(cfg, record.ledger.mechanisms)
    return {
        "sample_dp": cfg.privacy.sample.enabled,
        "client_dp": cfg.privacy.client.mode,
        "accountant": cfg.privacy.accountant,
        "assumptions": accounting_assumptions(cfg),
        "budget_epsilon": cfg.privacy.budget_epsilon or None,
        "stopped_early": None if record.budget_stop is None else asdict(record.budget_stop),
        "ledger": ledger.to_json(),
        "epsilon_per_round": {scope: ledger.per_round(scope, cfg.privacy.accountant)
                              for scope in ledger.scopes},
        "client_reported_epsilon": {str(k): v for k, v in record.client_reported.items()},
        # Client-level DP, per round: the norm that clipped it, the noise std on the sum,
        # the effective noise multiplier the release had (>= the accounted one).
        "client_dp_rounds": record.client_dp_log,
        "audit": audits,
    }


def write_run(
    run_dir: RunDirectory, cfg: Config, data: FederatedData, record: RunRecord,
    wall_s: float, audits: dict | None = None,
) -> RunResult:
    """Write every file of a finished run and publish the directory."""
    rows = record.rows
    final = {k: v for k, v in rows[-1].items() if v is not None}
    stats = data.stats()
    privacy = privacy_report(cfg, record, audits or {})
    summary = {"scopes": privacy["ledger"]["report"]["scopes"],
               "stopped_early": privacy["stopped_early"], "audit": audits or {}}
    epsilon = run_epsilon(summary["scopes"], cfg.privacy.accountant)
    stop_reason = StopReason.BUDGET if record.budget_stop else StopReason.FINISHED
    (run_dir.path / "config.toml").write_text(cfg.to_toml())
    run_dir.write_json("run.json", {
        **run_header(cfg), "rounds_completed": rows[-1]["round"],
        "stop_reason": stop_reason.value, "wall_s": wall_s,
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "final": final, "epsilon": epsilon, "privacy": summary,
        "epsilon_upper_bound": not epsilon_caveats(cfg) if epsilon is not None else None,
        "epsilon_caveats": epsilon_caveats(cfg) if epsilon is not None else [],
        "versions": package_versions(),
    })
    run_dir.write_json("privacy.json", privacy)
    run_dir.write_json("metrics.json", rows)
    run_dir.write_metrics_csv(rows, metric_columns(cfg))
    run_dir.write_json("timings.json", {"wall_s": wall_s, "round_s": record.round_seconds})
    run_dir.write_json("partition_stats.json", stats)
    run_dir.write_json("participation.json", {
        str(r): purposes for r, purposes in record.participation.items()})
    if cfg.output.save_weights:
        np.savez(run_dir.path / "weights.npz", **record.weights)
    if cfg.output.plot:
        title = f"{cfg.name}: {cfg.framework}, {cfg.federation.strategy}, {cfg.data.dataset}"
        plots.plot_metrics(rows, run_dir.path / "metrics.png", title)
        plots.plot_partitions(stats, run_dir.path / "partitions.png",
                              f"{cfg.data.dataset}: {cfg.data.partitioner} partition")
        if record.ledger.mechanisms:
            plots.plot_privacy(PrivacyLedger.for_config(cfg, record.ledger.mechanisms),
                               cfg.privacy.accountant,
                               run_dir.path / "privacy.png", f"{cfg.name}: ε per round")
    for name in (CHECKPOINT, CHECKPOINT_INFO):  # only a stopped run needs them
        (run_dir.path / name).unlink(missing_ok=True)
    path = run_dir.commit()
    return RunResult(path, cfg.config_hash(), rows, wall_s, final, summary, epsilon,
                     stop_reason, record.budget_stop, record.round_seconds,
                     epsilon_caveats(cfg) if epsilon is not None else [])


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value



def run_header(cfg: Config) -> dict[str, Any]:
    """The first keys of ``run.json``: what ran."""
    return {"name": cfg.name, "config_hash": cfg.config_hash(), "seed": cfg.seed,
            "framework": cfg.framework, "backend": cfg.backend, "rounds": cfg.rounds,
            # float reductions depend on these: part of what ran (runtime.* keys)
            "threads": {"per_client": cfg.runtime.threads_per_client,
                        "server": cfg.runtime.server_threads},
            "noise": cfg.privacy.noise if cfg.privacy.any_dp else None,
            **_assignments(cfg)}


def _assignments(cfg: Config) -> dict[str, Any]:
    """Who trains in Keras (mixed) and who is malicious (``[attack]``): a simulation's
    facts, from the seed (:mod:`sandbox.core.assignment`)."""
    found: dict[str, Any] = {}
    if cfg.framework == "mixed":
        found["keras_partitions"] = keras_partitions(cfg)
        found["evaluation_framework"] = "torch"
    if cfg.attack.any:
        found["attack"] = {"kind": cfg.attack.kind, "partitions": malicious_partitions(cfg)}
    return found
