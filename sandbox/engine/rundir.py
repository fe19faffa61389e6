"""Run directories: everything one run leaves behind, written all-or-nothing.

A run writes into ``<output.dir>/.<run>.partial`` and is renamed to ``<output.dir>/<run>``
only when every file is in place; a run that raises is renamed ``<run>.failed`` with the
error in ``error.txt``; a run stopped on purpose by a round callback (a pruned tuning
trial) becomes ``<run>.pruned`` with ``stopped.txt``. Both keep ``metrics.json`` and
``ledger.json`` (privacy spent so far). The files of a finished run are listed in
:mod:`sandbox.core.results`.

A run stopped by ``privacy.budget_epsilon`` is a finished run (committed, not
``.failed``): its rows end at the last round within budget and ``run.json`` says where
and why it stopped (``stop_reason = "budget"``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sandbox.core.results import (
    METRIC_COLUMNS,
    RunResult,
    StopReason,
    package_versions,
    run_epsilon,
)
from sandbox.engine import plots

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.data import FederatedData
    from sandbox.core.models import ModelSpec
    from sandbox.engine.recorder import RunRecorder


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

    def fail(self, exc: BaseException, reason: StopReason) -> Path:
        pruned = reason is StopReason.PRUNED
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
    final = {k: v for k, v in rows[-1].items() if v is not None}
    stats = data.stats()
    privacy = privacy_report(cfg, recorder, audits or {})
    privacy["ledger"]["data_fingerprint"] = cfg.data_fingerprint()
    summary = {"scopes": privacy["ledger"]["report"]["scopes"],
               "stopped_early": privacy["stopped_early"], "audit": audits or {}}
    epsilon = run_epsilon(summary["scopes"], cfg.privacy.accountant)
    stop_reason = StopReason.BUDGET if recorder.stopped else StopReason.FINISHED
    seconds = [recorder.round_seconds[row["round"]] for row in rows]
    (run_dir.path / "config.toml").write_text(cfg.to_toml())
    run_dir.write_json("run.json", {
        "name": cfg.name, "config_hash": cfg.config_hash(), "seed": cfg.seed,
        "framework": cfg.framework, "backend": cfg.backend, "rounds": cfg.rounds,
        "rounds_completed": rows[-1]["round"], "stop_reason": stop_reason.value,
        "wall_s": wall_s, "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "final": final, "epsilon": epsilon, "privacy": summary,
        "versions": package_versions(),
    })
    run_dir.write_json("privacy.json", privacy)
    run_dir.write_json("metrics.json", rows)
    run_dir.write_metrics_csv(rows)
    run_dir.write_json("timings.json", {"wall_s": wall_s, "round_s": seconds})
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
    return RunResult(path, cfg.config_hash(), rows, wall_s, final, summary, epsilon,
                     stop_reason, privacy["stopped_early"], seconds)
