"""The round observer of a run: per-round rows, timings, progress bar, TensorBoard.

The ServerApp (:mod:`sandbox.engine.server`) reports to a :class:`RunRecorder`: the
centralized metrics after round 0 (the initial model) and every round, and the strategy
when it starts and finishes. Besides the metrics, every round's row says who took part
(``PARTICIPATION_COLUMNS`` in results): the partitions whose training and evaluation replies
were valid, the validation examples behind ``fed_val_*`` and whether that aggregate was
weighted by examples, so readers of the rows (the search's objective) never re-derive
the engine's sampling or sizes. A non-finite centralized loss stops the run here
(:class:`~sandbox.core.errors.RunDiverged`), then the round callbacks (pruning) run.
:meth:`RunRecorder.finish` hands what a finished run produced to
:func:`sandbox.engine.rundir.write_run` as one :class:`RunRecord`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sandbox.core import wire
from sandbox.core.errors import RunDiverged
from sandbox.core.privacy import PrivacyLedger
from sandbox.core.privacy.assumptions import epsilon_caveats
from sandbox.core.results import (
    FRAMEWORK_COLUMNS,
    METRIC_COLUMNS,
    PRIVACY_COLUMNS,
    BudgetStop,
)
from sandbox.engine import interrupt
from sandbox.engine.checkpoint import Checkpoint, save_checkpoint
from sandbox.engine.replies import metric_columns
from sandbox.engine.tensorboard import ScalarWriter

if TYPE_CHECKING:
    from pathlib import Path

    from sandbox.core.config import Config
    from sandbox.core.errors import BudgetExhausted
    from sandbox.core.models import ModelSpec
    from strategies import Accounted

#: Row column <- metric key in the clients' aggregated replies.
CLIENT_COLUMNS = {"train_loss": wire.TRAIN_LOSS, "fed_val_loss": wire.EVAL_LOSS,
                  "fed_val_accuracy": wire.EVAL_ACCURACY}
#: TensorBoard tag <- row column, for the centralized metrics.
CENTRAL_TAGS = {"central/val_accuracy": "central_val_accuracy",
                "central/val_loss": "central_val_loss",
                "central/test_accuracy": "central_test_accuracy",
                "central/test_loss": "central_test_loss"}


@dataclass(frozen=True)
class RunRecord:
    """Everything a finished run produced, as plain values."""

    rows: list[dict[str, float | None]]
    round_seconds: list[float]
    weights: dict[str, np.ndarray]  # final global model, canonical names
    ledger: PrivacyLedger
    client_reported: dict[int, float]
    participation: dict[int, dict[str, list[int]]]  # round -> purpose -> partition ids
    budget_stop: BudgetStop | None
    client_dp_log: list[dict]  # per round: clipping norm, noise std, effective σ (client DP)


class RunRecorder:
    """Collects what a run reports, round by round."""

    def __init__(self, cfg: Config, *, tensorboard_dir: Path | None = None, callbacks=(),
                 prior_ledger: PrivacyLedger | None = None,
                 checkpoint_dir: Path | None = None, resume: Checkpoint | None = None
                 ) -> None:
        self.cfg = cfg
        self.prior_ledger = prior_ledger
        self.callbacks = list(callbacks)
        self.rows: dict[int, dict[str, float]] = {}
        self.round_seconds: dict[int, float] = {}
        self.accounted: Accounted | None = None
        self.finished = False
        self.stopped: BudgetExhausted | None = None
        self.stop_exception: BaseException | None = None
        self.checkpoint_dir = checkpoint_dir
        self._config_hash = cfg.config_hash()  # what a checkpoint is checked against
        self._node_states = None  # callable: the nodes' Context.state (inline grid)
        if resume is not None:
            self.rows = dict(resume.rows)
            self.round_seconds = dict(resume.round_seconds)
        self._last = time.perf_counter()
        self._tb = ScalarWriter(tensorboard_dir) if tensorboard_dir is not None else None
        self._progress = _progress_bar(cfg) if cfg.output.progress else None
        self._caveats = epsilon_caveats(cfg)
        self._columns = metric_columns(cfg)
        self._extra_columns = self._columns[len(METRIC_COLUMNS):]

    def round_finished(self, server_round: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        self.rows[server_round] = {
            "round": server_round,
            **{k: metrics[k] for k in CENTRAL_TAGS.values()},
            **{k: metrics[k] for k in PRIVACY_COLUMNS if k in metrics},
            **self._client_columns(server_round),
            # per framework, compute, attack (sandbox.engine.replies)
            **{k: metrics[k] for k in self._extra_columns if k in metrics},
        }
        self.round_seconds[server_round] = now - self._last
        self._last = now
        try:
            finite = all(math.isfinite(metrics[k]) for k in CENTRAL_TAGS.values())
            if finite:
                # Before anything about the round leaves the process: a run resumed after
                # a kill redoes only rounds nobody has seen (fresh noise would otherwise
                # release the round twice while the ledger charges it once).
                self._checkpoint(server_round)
            self._announce_failures(server_round)
            self._show(server_round, metrics)
            if not finite:
                raise RunDiverged(server_round)
            interrupt.check(server_round)  # SIGINT/SIGTERM: stop at this round boundary
            for callback in self.callbacks:
                callback(server_round, dict(self.rows[server_round]))
        except BaseException as exc:
            # Runtimes that run the ServerApp in a thread (Ray) may swallow it.
            self.stop_exception = exc
            raise

    def _show(self, server_round: int, metrics: dict[str, float]) -> None:
        """The round's TensorBoard scalars and progress bar."""
        if self._tb:
            self._tb.scalars(server_round, {
                **{tag: metrics[key] for tag, key in CENTRAL_TAGS.items()},
                **{f"privacy/{k}": metrics[k] for k in PRIVACY_COLUMNS if k in metrics},
            })
        if self._progress and server_round > 0:
            self._progress.update(self._progress.task_ids[0], completed=server_round,
                                  acc=metrics["central_val_accuracy"],
                                  eps=_epsilon_text(metrics, self._caveats))

    def _client_columns(self, server_round: int) -> dict[str, Any]:
        """This round's aggregated client metrics and failures (they precede the central
        evaluation in Flower's round), so round callbacks see the whole row."""
        if self.accounted is None or server_round == 0:
            return {}
        result = self.accounted.result
        sources = {"train_loss": result.train_metrics_clientapp,
                   "fed_val_loss": result.evaluate_metrics_clientapp,
                   "fed_val_accuracy": result.evaluate_metrics_clientapp}
        row: dict[str, Any] = {}
        for column, per_round in sources.items():
            record = per_round.get(server_round)
            if record is not None and CLIENT_COLUMNS[column] in record:
                row[column] = float(record[CLIENT_COLUMNS[column]])
        failed = self.accounted.failures.get(server_round, {})
        row["train_failures"] = len(failed.get("train", {}))
        row["evaluate_failures"] = len(failed.get("evaluate", {}))
        row["failures"] = {purpose: {str(pid): why for pid, why in by_pid.items()}
                           for purpose, by_pid in failed.items()} or None
        return row | self._participation(server_round)

    def _participation(self, server_round: int) -> dict[str, Any]:
        """:data:`PARTICIPATION_COLUMNS` of ``server_round``, from what the strategy saw."""
        accounted = self.accounted
        failed = accounted.failures.get(server_round, {}).get("train", {})
        sampled = accounted.participation.get(server_round, {}).get("train", [])
        evaluated = accounted.evaluated.get(server_round, {})
        return {"train_partitions": [pid for pid in sampled if pid not in failed],
                "fed_val_partitions": sorted(evaluated),
                "fed_val_examples": sum(evaluated.values()),
                "fed_val_weighted": _weighted_by(accounted) != wire.UNIT_WEIGHT}

    def _announce_failures(self, server_round: int) -> None:
        failed = self.rows[server_round].get("failures")
        if not failed:
            return
        parts = [f"{purpose} {pid}: {why}" for purpose, by_pid in failed.items()
                 for pid, why in by_pid.items()]
        line = f"round {server_round}: {len(parts)} client failure(s): " + "; ".join(parts)
        if self._progress:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def _checkpoint(self, server_round: int) -> None:
        """Keep what resuming after this round needs (inline backend; not round 0)."""
        if self.checkpoint_dir is None or self._node_states is None or server_round == 0:
            return
        save_checkpoint(self.checkpoint_dir, Checkpoint(
            self._config_hash, server_round, self.accounted, dict(self.rows),
            dict(self.round_seconds), self._node_states()))

    def strategy_started(self, accounted: Accounted, node_states=None) -> None:
        self.accounted = accounted
        self._node_states = node_states

    def strategy_finished(self, accounted: Accounted, stopped: BudgetExhausted | None) -> None:
        self.accounted = accounted
        self.stopped = stopped
        self.finished = True

    def stop_progress(self) -> None:
        if self._progress:
            self._progress.stop()

    def rows_so_far(self) -> list[dict[str, Any]]:
        return self._merged_rows()

    def ledger_so_far(self) -> PrivacyLedger | None:
        return None if self.accounted is None else self.accounted.ledger

    def finish(self, spec: ModelSpec) -> RunRecord:
        """The finished run's record; writes the clients' metrics to TensorBoard, closes it."""
        rows = self._merged_rows()
        if self._tb:
            scalars = [*CLIENT_COLUMNS, *(c for c in FRAMEWORK_COLUMNS if c in self._columns)]
            for row in rows[1:]:
                self._tb.scalars(row["round"], {
                    f"clients/{k}": row[k] for k in scalars if row[k] is not None
                })
            self._tb.close()
        arrays = wire.record_to_arrays(spec, self.accounted.result.arrays)
        stop = self.stopped
        return RunRecord(
            rows=rows,
            round_seconds=[self.round_seconds[row["round"]] for row in rows],
            weights=dict(zip(spec.weight_names(), arrays, strict=True)),
            ledger=self.accounted.ledger,
            client_reported=dict(sorted(self.accounted.client_reported.items())),
            participation=dict(sorted(self.accounted.participation.items())),
            budget_stop=None if stop is None else BudgetStop(
                stop.server_round, stop.scope, stop.projected, str(stop)),
            client_dp_log=list(self.accounted.client_dp_log),
        )

    def _merged_rows(self) -> list[dict[str, Any]]:
        """Rows per round with every column (None where a round has no value)."""
        return [{key: None for key in self._columns} | self.rows[r] for r in sorted(self.rows)]


def _weighted_by(accounted: Accounted) -> str | None:
    """The reply metric the innermost (registry) strategy weighs client metrics by.

    The wrappers (ledger, client-level DP) delegate aggregation to it; the server chose
    the key (:func:`sandbox.engine.server.build_accounted_strategy`).
    """
    strategy = accounted
    while not hasattr(strategy, "weighted_by_key") and hasattr(strategy, "strategy"):
        strategy = strategy.strategy
    return getattr(strategy, "weighted_by_key", None)


def _epsilon_text(metrics: dict[str, float], caveats: list[str]) -> str:
    parts = [f"{label} {metrics[key]:.3g}" for key, label in
             (("eps_client_max", "ε client max"), ("eps_federation", "ε federation"))
             if key in metrics]
    if parts and caveats:
        parts.append("(not an upper bound)")
    return ", ".join(parts) or "ε -"


def _progress_bar(cfg: Config):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("val acc {task.fields[acc]:.3f}")]
    if cfg.privacy.any_dp:  # ε so far: the largest client's (DP-SGD), the federation's
        columns.append(TextColumn("{task.fields[eps]}"))
    progress = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(),
                        transient=False)
    progress.add_task(f"{cfg.name} [{cfg.framework}/{cfg.backend}]", total=cfg.rounds,
                      acc=float("nan"), eps="ε -")
    progress.start()
    return progress
