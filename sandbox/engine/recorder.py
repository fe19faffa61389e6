"""The round observer of a run: per-round rows, timings, progress bar, TensorBoard.

The ServerApp (:mod:`sandbox.engine.server`) reports to a :class:`RunRecorder`: the
centralized metrics after round 0 (the initial model) and every round, and the strategy
when it starts and finishes. Round callbacks (pruning, divergence checks) run here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sandbox.core import wire
from sandbox.core.results import METRIC_COLUMNS, PRIVACY_COLUMNS
from sandbox.engine.tensorboard import ScalarWriter

if TYPE_CHECKING:
    import numpy as np

    from sandbox.core.config import Config
    from sandbox.core.errors import BudgetExhausted
    from sandbox.core.models import ModelSpec
    from sandbox.engine.rundir import RunDirectory

#: Row column <- metric key in the clients' aggregated replies.
CLIENT_COLUMNS = {"train_loss": wire.TRAIN_LOSS, "eval_loss": wire.EVAL_LOSS,
                  "eval_accuracy": wire.EVAL_ACCURACY}


class RunRecorder:
    """Collects what a run reports, round by round."""

    def __init__(self, cfg: Config, run_dir: RunDirectory, callbacks=(),
                 prior_ledger=None) -> None:
        self.cfg = cfg
        self.prior_ledger = prior_ledger
        self.run_dir = run_dir
        self.callbacks = list(callbacks)
        self.rows: dict[int, dict[str, float]] = {}
        self.round_seconds: dict[int, float] = {}
        self.result = None
        self.accounted = None
        self.stopped: BudgetExhausted | None = None
        self.stop_exception: BaseException | None = None
        self._last = time.perf_counter()
        self._tb = ScalarWriter(run_dir.path / "tensorboard") if cfg.output.tensorboard else None
        self._progress = _progress_bar(cfg) if cfg.output.progress else None

    def round_finished(self, server_round: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        self.rows[server_round] = {
            "round": server_round,
            "central_accuracy": metrics["accuracy"],
            "central_loss": metrics["loss"],
            **{k: metrics[k] for k in PRIVACY_COLUMNS if k in metrics},
        }
        self.round_seconds[server_round] = now - self._last
        self._last = now
        if self._tb:
            self._tb.scalars(server_round, {
                "central/accuracy": metrics["accuracy"], "central/loss": metrics["loss"],
                **{f"privacy/{k}": metrics[k] for k in PRIVACY_COLUMNS if k in metrics},
            })
        if self._progress and server_round > 0:
            self._progress.update(self._progress.task_ids[0], completed=server_round,
                                  acc=metrics["accuracy"])
        for callback in self.callbacks:
            try:
                callback(server_round, dict(self.rows[server_round]))
            except BaseException as exc:
                # Runtimes that run the ServerApp in a thread (Ray) may swallow it.
                self.stop_exception = exc
                raise

    def strategy_started(self, accounted) -> None:
        self.accounted = accounted

    def strategy_finished(self, result, accounted=None, stopped=None) -> None:
        self.result = result
        self.accounted = accounted
        self.stopped = stopped

    def stop_progress(self) -> None:
        if self._progress:
            self._progress.stop()

    def save_partial(self) -> None:
        """Metrics and ledger so far, into a run that stops without finishing."""
        self.run_dir.write_json("metrics.json", [self.rows[r] for r in sorted(self.rows)])
        if self.accounted is not None:
            self.accounted.ledger.data_fingerprint = self.cfg.data_fingerprint()
            self.accounted.ledger.save(self.run_dir.path / "ledger.json")

    def finish(self) -> list[dict[str, float]]:
        """Rows per round, centralized metrics merged with the clients' aggregated ones.

        Also writes the clients' metrics to TensorBoard and closes the event file.
        """
        sources = {"train_loss": self.result.train_metrics_clientapp,
                   "eval_loss": self.result.evaluate_metrics_clientapp,
                   "eval_accuracy": self.result.evaluate_metrics_clientapp}
        rows = []
        for server_round in sorted(self.rows):
            row = {key: None for key in METRIC_COLUMNS} | self.rows[server_round]
            for column, per_round in sources.items():
                record = per_round.get(server_round)
                if record is not None and CLIENT_COLUMNS[column] in record:
                    row[column] = float(record[CLIENT_COLUMNS[column]])
            rows.append(row)
        if self._tb:
            for row in rows[1:]:
                self._tb.scalars(row["round"], {
                    f"clients/{k}": row[k] for k in CLIENT_COLUMNS if row[k] is not None
                })
            self._tb.close()
        return rows

    def final_weights(self, spec: ModelSpec) -> dict[str, np.ndarray]:
        """Final global model as named arrays in the canonical layout."""
        weights = wire.record_to_arrays(spec, self.result.arrays)
        return dict(zip(spec.weight_names(), weights, strict=True))


def _progress_bar(cfg: Config):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]:.3f}"), TimeElapsedColumn(),
        TimeRemainingColumn(), transient=False,
    )
    progress.add_task(f"{cfg.name} [{cfg.framework}/{cfg.backend}]", total=cfg.rounds,
                      acc=float("nan"))
    progress.start()
    return progress
