"""Privacy on the server: the client-level DP wrapper, the ledger and the budget.

:func:`wrap_client_dp` puts :class:`strategies.client_dp.ClientLevelDP` around the
registry strategy (McMahan et al. 2018 with fixed clipping; Andrew et al. 2021 with
adaptive clipping; clipping on the server or, with Flower's clipping mods, on the
clients). :class:`AccountedStrategy` is the outermost wrapper of every run: it chooses
each round's clients (Poisson sampling for training under client-level DP), writes each
round's DP mechanisms into the :class:`~sandbox.core.privacy.PrivacyLedger`, stops the run
before a round that would exceed ``privacy.budget_epsilon`` and keeps a ``Result`` that
survives such a stop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from sandbox.core import wire
from sandbox.core.errors import BudgetExhausted, ClientsFailed
from sandbox.core.privacy import FEDERATION, Mechanism, PrivacyLedger, client_dp_rate
from sandbox.core.privacy.plan import client_dp_plan
from sandbox.core.sampling import clients_for_round, poisson_clients_for_round
from strategies.client_dp import ClientLevelDP
from strategies.rounds import run_rounds
from strategies.sampling import SampledGrid, discover_partitions, in_partition_order

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.privacy import SampleDPPlan


def wrap_client_dp(strategy: Strategy, cfg: Config) -> Strategy:
    """:class:`ClientLevelDP` for ``privacy.client.mode`` around a mean-aggregating strategy.

    ``server_fixed`` / ``client_fixed``: DP-FedAvg (McMahan et al. 2018);
    ``server_adaptive`` / ``client_adaptive``: adaptive clipping (Andrew et al. 2021).
    In the ``client_*`` modes the clients clip with Flower's clipping mods
    (:func:`clients.dp.client_mods`) and the server clips again.
    """
    dp = cfg.privacy.client
    return ClientLevelDP(strategy, client_dp_plan(cfg), seed=cfg.seed,
                         target_quantile=dp.target_clipped_quantile,
                         clip_norm_lr=dp.clip_norm_lr, secure_rng=cfg.privacy.secure_rng)


class AccountedStrategy(Strategy):
    """Wrap ``strategy``: ledger entries per round, budget stop, a stop-proof Result.

    Parameters
    ----------
    strategy : Strategy
        The (possibly DP-wrapped) registry strategy; all decisions are delegated to it.
    cfg : Config
        The run's config (privacy section, client count).
    sample_plans : dict of int to SampleDPPlan
        Each client's DP-SGD mechanism per round (empty without sample-level DP).
    initial_arrays : ArrayRecord
        The initial global model (the result of a run stopped before its first round).
    prior : PrivacyLedger, optional
        Mechanisms already spent on the same data; the budget check composes them in.
    """

    def __init__(self, strategy: Strategy, cfg: Config,
                 sample_plans: dict[int, SampleDPPlan], *, initial_arrays: ArrayRecord,
                 source: str = "", prior: PrivacyLedger | None = None) -> None:
        super().__init__()
        self.strategy = strategy
        self.cfg = cfg
        self.sample_plans = sample_plans
        self.source = source
        self.ledger = PrivacyLedger.for_config(cfg)
        # Mechanisms spent earlier on the same data (e.g. previous tuning trials): the
        # budget covers them too.
        self.prior = list(prior.mechanisms) if prior is not None else []
        self.result = Result(arrays=initial_arrays)  # what a stop before round 1 returns
        self.client_reported: dict[int, float] = {}
        #: round -> {"train": [partition ids], "evaluate": [...]}, as sampled
        self.participation: dict[int, dict[str, list[int]]] = {}
        #: round -> {"train"|"evaluate": {partition id: "ExceptionType: message"}}
        self.failures: dict[int, dict[str, dict[int, str]]] = {}
        #: round -> {partition id: validation examples} of the valid evaluate replies
        self.evaluated: dict[int, dict[int, int]] = {}
        self._partitions: dict[int, int] = {}  # node id -> partition id

    @property
    def client_dp_log(self) -> list[dict[str, float | int | None]]:
        """Per round of client-level DP: clients, clipping norm, noise (empty without it)."""
        if isinstance(self.strategy, ClientLevelDP):
            return self.strategy.round_log
        return []

    # -- the run's mechanisms ----------------------------------------------------------
    def _federation_mechanism(self, server_round: int) -> Mechanism | None:
        if self.cfg.privacy.client.mode == "off":
            return None
        _, rate = client_dp_rate(self.cfg)
        return Mechanism(FEDERATION, "client-dp", server_round,
                         self.cfg.privacy.client.noise_multiplier, rate, 1, self.source)

    def _client_mechanism(self, server_round: int, pid: int) -> Mechanism:
        plan = self.sample_plans[pid]
        return Mechanism(f"client-{pid}", "dp-sgd", server_round, plan.noise_multiplier,
                         plan.sample_rate, plan.steps, self.source)

    def _planned(self, server_round: int, partition_ids: list[int]) -> list[Mechanism]:
        planned = []
        fed = self._federation_mechanism(server_round)
        if fed is not None:
            planned.append(fed)
        if self.sample_plans:
            planned += [self._client_mechanism(server_round, pid) for pid in partition_ids]
        return planned

    def _check_budget(self, server_round: int, partition_ids: list[int]) -> None:
        budget = self.cfg.privacy.budget_epsilon
        if not budget:
            return
        for mechanism in self._planned(server_round, partition_ids):
            projected = self.ledger.epsilon(mechanism.scope, self.cfg.privacy.accountant,
                                            extra=[*self.prior, mechanism])
            if projected > budget:
                raise BudgetExhausted(server_round, mechanism.scope, projected, budget)

    # -- which clients take part -------------------------------------------------------
    def _sample(self, server_round: int, purpose: str, grid: Grid) -> tuple[list[int], Grid]:
        """This round's partition ids for ``purpose`` and a grid showing only their nodes."""
        if not self._partitions:
            self._partitions = discover_partitions(grid, self.cfg.data.num_clients)
        fraction = (self.cfg.federation.fraction_train if purpose == "train"
                    else self.cfg.federation.fraction_evaluate)
        if purpose == "train" and self.cfg.privacy.client.mode != "off":
            # The sampling the client-level accountant assumes: Poisson with q = fraction.
            chosen = poisson_clients_for_round(self.cfg.seed, server_round, purpose,
                                               self._partitions.values(), fraction,
                                               secure=self.cfg.privacy.secure_rng)
        else:
            seed = self.cfg.seed
            if purpose == "evaluate" and self.cfg.federation.evaluate_seed is not None:
                seed = self.cfg.federation.evaluate_seed
            chosen = clients_for_round(seed, server_round, purpose,
                                       self._partitions.values(), fraction)
        self.participation.setdefault(server_round, {})[purpose] = chosen
        wanted = set(chosen)
        nodes = sorted((pid, node) for node, pid in self._partitions.items() if pid in wanted)
        return chosen, SampledGrid(grid, [node for _, node in nodes])

    # -- failed clients ------------------------------------------------------------------
    def _record_failures(self, server_round: int, purpose: str,
                         replies: list[Message]) -> dict[int, str]:
        """Error replies and sampled clients that never replied (timed out), by pid."""
        failed = {self._partitions[r.metadata.src_node_id]: r.error.reason or "error"
                  for r in replies if r.has_error()}
        replied = {self._partitions[r.metadata.src_node_id] for r in replies}
        timeout = self.cfg.runtime.client_timeout_s
        for pid in self.participation.get(server_round, {}).get(purpose, []):
            if pid not in replied:
                failed[pid] = (f"TimeoutError: no reply within runtime.client_timeout_s = "
                               f"{timeout:g} s")
        failed = dict(sorted(failed.items()))
        if failed:
            self.failures.setdefault(server_round, {})[purpose] = failed
        return failed

    def _check_replies(self, server_round: int, valid: int, failed: dict[int, str]) -> None:
        """Stop the run when failures leave fewer than ``min_train_replies`` replies.

        Never under client-level DP: a stop would publish that nobody took part. The round
        releases noise only (:class:`ClientLevelDP`), its failures stay in
        :attr:`failures`, and the run goes on.
        """
        if self.cfg.privacy.client.mode != "off":
            return
        sampled = len(self.participation[server_round]["train"])
        needed = min(self.cfg.federation.min_train_replies, sampled)
        if failed and valid < needed:
            raise ClientsFailed(server_round, valid, sampled, needed, failed)

    # -- Strategy interface --------------------------------------------------------------
    def start(self, *, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None, evaluate_fn=None,
              first_round: int = 1) -> Result:
        """Flower's ``Strategy.start``, optionally continuing at ``first_round`` (resume)."""
        return run_rounds(self, grid=grid, initial_arrays=initial_arrays,
                          num_rounds=num_rounds, first_round=first_round, timeout=timeout,
                          train_config=train_config, evaluate_config=evaluate_config,
                          evaluate_fn=evaluate_fn)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        chosen, sampled = self._sample(server_round, "train", grid)
        self._check_budget(server_round, chosen)
        return self.strategy.configure_train(server_round, arrays, config, sampled)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_partition_order(replies, self._partitions)
        failed = self._record_failures(server_round, "train", replies)
        trained = []
        for reply in replies:
            if reply.has_error():
                continue
            metrics = reply.content[wire.METRICS]
            pid = self._partitions[reply.metadata.src_node_id]
            if int(metrics[wire.PARTITION_ID]) != pid:
                raise RuntimeError(f"node {reply.metadata.src_node_id} trained partition "
                                   f"{int(metrics[wire.PARTITION_ID])}, not its own {pid}")
            trained.append(pid)
            if wire.DP_EPSILON in metrics:
                self.client_reported[pid] = float(metrics[wire.DP_EPSILON])
        self._check_replies(server_round, len(trained), failed)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is not None:
            self.result.arrays = arrays
            fed = self._federation_mechanism(server_round)
            if fed is not None:
                self.ledger.add(fed)
        if self.sample_plans:
            for pid in sorted(trained):
                self.ledger.add(self._client_mechanism(server_round, pid))
        if metrics is not None:
            self.result.train_metrics_clientapp[server_round] = metrics
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.cfg.federation.fraction_evaluate == 0:
            return []
        _, sampled = self._sample(server_round, "evaluate", grid)
        return self.strategy.configure_evaluate(server_round, arrays, config, sampled)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        replies = in_partition_order(replies, self._partitions)
        self._record_failures(server_round, "evaluate", replies)
        self.evaluated[server_round] = {
            self._partitions[r.metadata.src_node_id]:
                int(r.content[wire.METRICS][wire.NUM_EXAMPLES])
            for r in replies if not r.has_error()}
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.result.evaluate_metrics_clientapp[server_round] = metrics
        return metrics
