"""Client-level DP around a mean-aggregating strategy: DP-FedAvg, fixed or adaptive clipping.

:class:`ClientLevelDP` implements

* **fixed clipping**: DP-FedAvg of McMahan, Ramage, Talwar & Zhang (2018), "Learning
  Differentially Private Recurrent Language Models" (ICLR): each sampled client's update
  is clipped to L2 norm C, the clipped updates are summed, Gaussian noise of std z·C is
  added to the sum, and the sum is divided by the *expected* number of clients qN (their
  fixed-denominator estimator, whose sensitivity is C/(qN) whatever the sample);
* **adaptive clipping**: Andrew, Thakkar, McMahan & Ramaswamy (2021), "Differentially
  Private Learning with Adaptive Clipping" (NeurIPS), Alg. 1: as above with C_t, plus a
  noised count of the updates at or below C_t that moves the norm geometrically towards
  the target quantile of the update norms.

Three things differ from Flower's ``DifferentialPrivacy*Clipping`` wrappers, each needed
for ε to be an upper bound:

1. the update noise of round t is scaled by C_t, the norm that bounded *this* round's
   sensitivity; the norm moves to C_{t+1} only afterwards (Flower adds noise scaled by
   C_{t+1}, too little whenever the norm shrinks);
2. the count uses b_i − ½ (sensitivity ½, as in Andrew et al. and TF Privacy), which
   is what the split z_Δ = (z⁻² − (2σ_b)⁻²)^(−½) assumes, and the fraction follows the
   paper's sign (more unclipped updates than the target → smaller norm);
3. the denominator is qN, a constant, and a round without replies still releases
   ``current + noise / (qN)``: the output never reveals whether anybody took part. So
   that nothing after the release reveals it either, the inner strategy runs in every
   round, empty or not, on one reply carrying the release with unit weight (its server
   optimizer is then post-processing of the release alone).

The noise comes from numpy generators seeded by (seed, round, purpose), or with
``secure_rng`` (``privacy.noise = "secure"``) from the OS's CSPRNG
(:func:`sandbox.core.privacy.noise.gaussian`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from sandbox.core import wire
from sandbox.core.privacy.noise import gaussian
from sandbox.core.privacy.plan import ClientDPPlan
from strategies.sampling import SampledGrid

logger = logging.getLogger(__name__)

# Seeds of the server's noise: [NOISE_TAG, seed, round, purpose]. The leading tag keeps
# these streams apart from the run's other (seed, round, ...) generators.
NOISE_TAG = 0xC11E_D9
UPDATE_NOISE = 1
COUNT_NOISE = 2
# Addressee of the inner strategy's training message in a round that sampled nobody; that
# message only anchors the release's reply (Message(reply_to=...)) and is never sent.
NO_NODE = 0


class ClientLevelDP(Strategy):
    """Client-level DP (add/remove one client) around a mean-aggregating ``strategy``.

    Each round the wrapper computes the DP release
    ``current + (Σ_i clip(Δ_i, C_t) + N(0, (z_Δ C_t)² I)) / (qN)`` itself and hands
    ``strategy`` one reply carrying the release with weight 1, so the inner mean is the
    release bit for bit and anything the inner strategy does after the mean (a server
    optimizer) is post-processing. The inner strategy is configured and aggregates in
    every round, also when nobody was sampled or every sampled client failed: its
    output and state (server momentum, Adam moments, its copy of the current model) are
    the same function of the release whoever took part. Its aggregated training metrics
    come from the valid replies (they are not covered by ε).

    Parameters
    ----------
    strategy : Strategy
        A mean-aggregating Flower strategy of the FedAvg family (FedAvg, FedAvgM,
        FedProx, FedOpt family); its ``weighted_by_key`` and ``train_metrics_aggr_fn``
        weigh the release's reply and aggregate the clients' training metrics.
    plan : ClientDPPlan
        The mechanism (z, z_Δ, σ_b, initial C, q, N; see
        :func:`sandbox.core.privacy.client_dp_plan`).
    seed : int
        Run seed for the noise generators.
    target_quantile : float
        Adaptive clipping: target fraction of updates at or below the norm (γ).
    clip_norm_lr : float
        Adaptive clipping: geometric learning rate of the norm (η_C).
    secure_rng : bool
        Draw the noise from ``os.urandom`` instead of seeded generators.
    """

    def __init__(self, strategy: Strategy, plan: ClientDPPlan, *, seed: int,
                 target_quantile: float = 0.5, clip_norm_lr: float = 0.2,
                 secure_rng: bool = False) -> None:
        super().__init__()
        self.strategy = strategy
        self.plan = plan
        self.seed = seed
        self.target_quantile = target_quantile
        self.clip_norm_lr = clip_norm_lr
        self.secure_rng = secure_rng
        self.clipping_norm = plan.clipping_norm  # C_t of the round being configured
        self.clients_clip = plan.mode.startswith("client")
        #: one dict per round (see :meth:`_log_round`)
        self.round_log: list[dict[str, float | int | None]] = []
        self._current = ArrayRecord()
        self._sampled = 0
        self._instruction: Message | None = None  # this round's message the release answers

    def summary(self) -> None:
        logger.info("client-level DP (%s): z=%g, z_update=%g, sigma_count=%g, C0=%g, "
                    "q=%g, N=%d", self.plan.mode, self.plan.noise_multiplier,
                    self.plan.update_noise_multiplier, self.plan.clipped_count_stddev,
                    self.plan.clipping_norm, self.plan.sample_rate, self.plan.num_clients)
        self.strategy.summary()

    # -- training ---------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = arrays
        if self.clients_clip:  # read by Flower's fixedclipping_mod / adaptiveclipping_mod
            config[KEY_CLIPPING_NORM] = float(self.clipping_norm)
        nodes = list(grid.get_node_ids())
        self._sampled = len(nodes)
        # The inner strategy is configured in every round (FedOpt keeps the model it is
        # sent as the base of its next step). Poisson sampling may choose nobody; Flower's
        # strategies would wait for a node, so they see a placeholder that gets no message.
        view = grid if nodes else SampledGrid(grid, [NO_NODE])
        messages = list(self.strategy.configure_train(server_round, arrays, config, view))
        if not messages:
            raise ValueError("client-level DP: the inner strategy configured no training "
                             "message (it must take every node it is shown)")
        self._instruction = messages[0]
        return messages if nodes else []

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [reply for reply in replies if not reply.has_error()]
        norm = self.clipping_norm  # C_t: bounds this round's sensitivity
        clipped_sum, unclipped = self._clipped_sum(valid, norm)
        update_std = self.plan.update_noise_multiplier * norm
        noise = self._noise(server_round, UPDATE_NOISE, clipped_sum.size, update_std)
        # One reply, weight 1, in every round: k copies of the release would average to
        # other float32 values for other k, and skipping empty rounds would show them.
        arrays, _ = self.strategy.aggregate_train(
            server_round, [self._release_reply(self._release(clipped_sum + noise))])
        self._instruction = None
        metrics = (self.strategy.train_metrics_aggr_fn(
            [reply.content for reply in valid], self.strategy.weighted_by_key)
            if valid else MetricRecord())
        fraction = self._update_norm(server_round, unclipped, len(valid))
        self._log_round(server_round, valid=len(valid), norm=norm, update_std=update_std,
                        fraction=fraction)
        return arrays, metrics

    def _release_reply(self, release: ArrayRecord) -> Message:
        """A reply to this round's training message carrying ``release`` with weight 1."""
        if self._instruction is None:
            raise RuntimeError("client-level DP: aggregate_train before configure_train")
        weight = MetricRecord({self.strategy.weighted_by_key: 1})
        return Message(RecordDict({wire.ARRAYS: release, wire.METRICS: weight}),
                       reply_to=self._instruction)

    def _clipped_sum(self, replies: list[Message], norm: float) -> tuple[np.ndarray, int]:
        """Σ clip(reply − current, ``norm``) as one float64 vector; updates at or below it."""
        base = _flat(self._current, self._current)
        total = np.zeros_like(base)
        unclipped = 0
        for reply in replies:
            records = list(reply.content.array_records.values())
            if len(records) != 1:
                raise ValueError(f"a training reply carries {len(records)} ArrayRecords; "
                                 "client-level DP expects exactly one")
            update = _flat(records[0], self._current) - base
            length = float(np.linalg.norm(update))
            # The server clips in every mode: for clients that ran Flower's clipping mod
            # this is a no-op up to float32 rounding, and the sensitivity bound never rests
            # on the clients' code.
            if length > norm:
                update *= norm / length
            if self.clients_clip and self.plan.adaptive:
                unclipped += 1 - _norm_bit(reply)
            else:
                unclipped += int(length <= norm)
            total += update
        return total, unclipped

    def _release(self, noised_sum: np.ndarray) -> ArrayRecord:
        """``current + noised_sum / (qN)`` with the current model's keys, shapes, dtypes."""
        flat = _flat(self._current, self._current) + noised_sum / self.plan.expected_clients
        out, start = {}, 0
        for key, array in self._current.items():
            stop = start + int(np.prod(array.shape, dtype=np.int64))
            values = flat[start:stop].reshape(array.shape).astype(array.numpy().dtype)
            out[key] = Array(values)
            start = stop
        return ArrayRecord(out)

    def _update_norm(self, server_round: int, unclipped: int, replies: int) -> float | None:
        """Andrew et al. Alg. 1: C ← C·exp(−η (b̄ − γ)), b̄ from the noised shifted count."""
        if not self.plan.adaptive:
            return None
        stddev = self.plan.clipped_count_stddev
        count_noise = float(self._noise(server_round, COUNT_NOISE, 1, stddev)[0])
        shifted = unclipped - replies / 2 + count_noise  # Σ (b_i − ½) + N(0, σ_b²)
        fraction = shifted / self.plan.expected_clients + 0.5
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (fraction - self.target_quantile))
        return fraction

    def _noise(self, server_round: int, purpose: int, size: int, std: float) -> np.ndarray:
        rng = None if self.secure_rng else np.random.default_rng(
            np.random.SeedSequence([NOISE_TAG, self.seed, server_round, purpose]))
        return gaussian(size, std, rng=rng)

    def _log_round(self, server_round: int, *, valid: int, norm: float, update_std: float,
                   fraction: float | None) -> None:
        count_std = self.plan.clipped_count_stddev if self.plan.adaptive else None
        self.round_log.append({
            "round": server_round,
            "clients_sampled": self._sampled,
            "valid_replies": valid,
            "clipping_norm": norm,
            "update_noise_std": update_std,  # on the sum of clipped updates
            "clipped_count_noise_std": count_std,
            "noised_unclipped_fraction": fraction,
            "next_clipping_norm": self.clipping_norm,
            "effective_noise_multiplier": effective_noise_multiplier(
                update_std / norm, clipped_count_stddev=count_std),
        })

    # -- evaluation: unchanged ------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord,
                           config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def effective_noise_multiplier(update_multiplier: float, *,
                               clipped_count_stddev: float | None = None) -> float:
    """The multiplier a round's releases amount to (Andrew et al. 2021, Thm. 1).

    Fixed clipping: the update's multiplier itself. Adaptive clipping: the update (sensitivity
    C, noise z_Δ C) and the shifted count (sensitivity ½, noise σ_b) together are one
    Gaussian mechanism with multiplier (z_Δ⁻² + (2σ_b)⁻²)^(−½).
    """
    if not clipped_count_stddev:
        return update_multiplier
    return (update_multiplier ** -2 + (2 * clipped_count_stddev) ** -2) ** -0.5


def _flat(record: ArrayRecord, like: ArrayRecord) -> np.ndarray:
    """``record``'s arrays, in ``like``'s key order, as one float64 vector."""
    if list(record.keys()) != list(like.keys()):
        raise ValueError(f"reply arrays {list(record.keys())} do not match the global "
                         f"model's {list(like.keys())}")
    return np.concatenate([np.asarray(record[key].numpy(), np.float64).ravel()
                           for key in like.keys()]) if len(like) else np.zeros(0)


def _norm_bit(reply: Message) -> int:
    """Flower's clipping bit (1 = the client clipped its update) from a reply's metrics."""
    for record in reply.content.metric_records.values():
        if KEY_NORM_BIT in record:
            return int(bool(record[KEY_NORM_BIT]))
    raise ValueError(f"node {reply.metadata.src_node_id} sent no '{KEY_NORM_BIT}': "
                     "client_adaptive needs Flower's adaptiveclipping_mod on the clients")
