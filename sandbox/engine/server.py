"""The Flower ``ServerApp`` every backend runs: registry strategy + centralized evaluation.

The strategy is built as ``accounted(DP wrapper?(registry strategy))``: the optional
client-level DP wrapper (:mod:`strategies.client_dp`), and outermost the privacy
ledger / budget wrapper (``strategies.accounted``). The global model is evaluated with a model from
``clients.get_evaluator`` on the server-held validation set and on the global test set
after round 0 (the initial model) and every round, on ``runtime.server_threads`` threads
(:mod:`clients.threads`). A mixed federation (``framework = "mixed"``: torch and Keras
clients train one model in the canonical weight layout) is evaluated in torch
(:func:`sandbox.core.assignment.server_framework`). The rows of a mixed, heterogeneous or
attacked federation also get the columns that need the clients' replies one by one
(per-framework metrics, compute, malicious partitions; :mod:`sandbox.engine.replies`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
)
from flwr.serverapp import Grid, ServerApp

import strategies
from clients import framework_threads, get_evaluator
from sandbox.core import wire
from sandbox.core.assignment import server_framework
from sandbox.core.errors import BudgetExhausted
from sandbox.core.experiment import load_experiment_data
from sandbox.core.privacy import sample_dp_plans
from sandbox.engine.grids import ForwardingGrid
from sandbox.engine.replies import client_columns

if TYPE_CHECKING:
    from flwr.serverapp.strategy import Result

    from sandbox.core.config import Config
    from sandbox.core.privacy import PrivacyLedger
    from sandbox.engine.checkpoint import Checkpoint
    from strategies import Accounted


#: The reply types whose metrics the rows' per-client columns need.
_KEPT = (MessageType.TRAIN, MessageType.EVALUATE)


class ReplyTap(ForwardingGrid):
    """``grid`` itself, keeping the metrics of valid train and evaluate replies.

    Strategies aggregate client metrics into one record per round; the rows of a mixed,
    heterogeneous or attacked federation need them one by one
    (:mod:`sandbox.engine.replies`). The ServerApp takes them once per round: its rounds
    run train, evaluate and the centralized evaluation one after another.
    """

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self._kept: dict[str, list[dict[str, float]]] = {kind: [] for kind in _KEPT}

    def take(self) -> dict[str, list[dict[str, float]]]:
        """The metrics kept since the last call, by message type; forgets them."""
        kept, self._kept = self._kept, {kind: [] for kind in _KEPT}
        return kept

    def _keep(self, replies: Iterable[Message]) -> list[Message]:
        replies = list(replies)
        for reply in replies:
            kind = reply.metadata.message_type
            if kind in self._kept and not reply.has_error():
                self._kept[kind].append(dict(reply.content[wire.METRICS]))
        return replies

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._keep(self._grid.pull_messages(message_ids))

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self._keep(self._grid.send_and_receive(messages, timeout=timeout))


class RoundObserver(Protocol):
    """Receives the centralized metrics after round 0 (initial model) and every round.

    ``prior_ledger`` holds privacy already spent on the same data (earlier tuning
    trials), which the run's budget covers too; ``None`` if there is none.
    """

    prior_ledger: PrivacyLedger | None

    def round_finished(self, server_round: int, metrics: dict[str, float]) -> None: ...

    def strategy_started(self, accounted: Accounted, node_states=None) -> None: ...

    def strategy_finished(self, accounted: Accounted,
                          stopped: BudgetExhausted | None) -> None: ...


def make_server_app(cfg: Config, observer: RoundObserver,
                    resume: Checkpoint | None = None) -> ServerApp:
    """Build the ``ServerApp`` for experiment ``cfg``; ``observer`` sees every round.

    With ``resume`` the run continues after the checkpoint's round, with its strategy.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_strategy(cfg, grid, observer, resume)

    return app


def build_accounted_strategy(cfg: Config, initial_arrays: ArrayRecord, *, source: str = "",
                             prior: PrivacyLedger | None = None) -> Accounted:
    """Registry strategy, optional client-level DP wrapper, ledger/budget wrapper."""
    data = load_experiment_data(cfg)
    strategy = strategies.build_strategy(cfg.federation, cfg.data.num_clients,
                                         weighted_by_key=weight_key(cfg), train=cfg.train)
    if cfg.privacy.client.mode != "off":
        strategy = strategies.wrap_client_dp(strategy, cfg)
    return strategies.accounted(strategy, cfg, sample_dp_plans(cfg, data),
                                initial_arrays=initial_arrays,
                                source=source, prior=prior)


def weight_key(cfg: Config) -> str:
    """The reply metric client metrics are weighted by.

    Under client-level DP every client counts equally (strategies.client_dp releases the
    noised clipped sum / qN); unit weights keep the aggregated client metrics so.
    """
    return wire.UNIT_WEIGHT if cfg.privacy.client.mode != "off" else wire.NUM_EXAMPLES


def run_strategy(cfg: Config, grid: Grid, observer: RoundObserver,
                 resume: Checkpoint | None = None) -> Result:
    data = load_experiment_data(cfg)
    spec = wire.model_spec_for(cfg)
    if resume is None:
        initial = wire.to_record(spec.init_weights(cfg.seed))
        accounted = build_accounted_strategy(cfg, initial, prior=observer.prior_ledger)
        first_round = 1
    else:  # the checkpoint's strategy holds the model and state after its round
        accounted = resume.strategy
        initial = accounted.result.arrays
        first_round = resume.server_round + 1
    # The server's framework work runs on runtime.server_threads threads, set in the thread
    # that evaluates (Flower's simulation runs the ServerApp in a thread of its own).
    framework = server_framework(cfg)
    with framework_threads(framework, cfg.runtime.server_threads):
        evaluator = get_evaluator(framework, spec, cfg.train)
    tap = ReplyTap(grid)

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        replies = tap.take()  # this round's (rounds run one after another)
        # Round callbacks run inside too: one may re-evaluate the model (twin runs).
        with framework_threads(framework, cfg.runtime.server_threads):
            evaluator.set_weights(wire.record_to_arrays(spec, arrays))
            val_loss, val_accuracy = evaluator.evaluate(data.x_val, data.y_val)
            test_loss, test_accuracy = evaluator.evaluate(data.x_test, data.y_test)
            central = {"central_val_loss": val_loss, "central_val_accuracy": val_accuracy,
                       "central_test_loss": test_loss, "central_test_accuracy": test_accuracy}
            privacy = accounted.ledger.round_summary(server_round, cfg.privacy.accountant)
            clients = {} if server_round == 0 else client_columns(
                cfg, replies[MessageType.TRAIN], replies[MessageType.EVALUATE], weight_key(cfg))
            observer.round_finished(server_round, {**central, **privacy, **clients})
        return MetricRecord(central)

    # The inline grid exposes its nodes' Context.state (checkpoints keep it).
    observer.strategy_started(accounted, getattr(grid, "node_states", None))
    stopped = None
    try:
        accounted.start(
            grid=tap,
            initial_arrays=initial,
            num_rounds=cfg.rounds,
            first_round=first_round,
            train_config=ConfigRecord({wire.FRAMEWORK: cfg.framework}),
            evaluate_fn=evaluate_global,
            timeout=cfg.runtime.client_timeout_s,
        )
    except BudgetExhausted as exc:
        stopped = exc
    result = accounted.result
    last = stopped.server_round - 1 if stopped else cfg.rounds
    missing = [r for r in range(1, last + 1) if r not in result.train_metrics_clientapp]
    if missing:
        raise RuntimeError(
            f"no client returned a valid training reply in round(s) {missing[:10]}; "
            "the ClientApp errors are in the log above"
        )
    observer.strategy_finished(accounted, stopped)
    return result
