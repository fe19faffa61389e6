"""What the objective "accuracy" reads each round: exact, subsampled, or DP-noised.

A tuner is only as good as the evaluations it ranks. Kuo et al. [1]_ show that in
federated tuning, evaluating on a subsample of clients and adding DP noise to the
evaluation can drag a tuner down to random search. :class:`Evaluation` makes that
measurable here:

* ``fraction = 0`` (default): the server-held validation set (``central_val_accuracy``),
  exact and free of any privacy cost;
* ``fraction > 0``: the *federated* validation accuracy (``fed_val_accuracy``) of the
  clients' local validation splits, on the subsample of clients the engine draws for
  evaluation (``federation.fraction_evaluate = fraction``);
* ``noise_multiplier = z > 0``: the aggregate is released as a pair (sum, count) with
  Gaussian noise of standard deviation ``z·√2`` on each, and the score is their ratio.
  What the pair is, and whose privacy it spends, follows the engine's aggregation, read
  from the round's row (``fed_val_weighted``, ``fed_val_partitions``,
  ``fed_val_examples``; :mod:`sandbox.engine.recorder`), never re-derived:

  - weighted by examples (no client-level DP): ``fed_val_accuracy = Σc_i / Σn_i``; the
    pair is (correct, examples) ``= (acc·N, N)``. Adding or removing one example moves
    it by at most ``(1, 1)``, L2 norm ``√2``: every evaluated client's example-level
    scope ``client-<pid>`` is charged one Gaussian mechanism of multiplier ``z``;
  - every client once (client-level DP, unit weights): ``fed_val_accuracy`` is the mean
    of the ``m`` evaluated clients' accuracies; the pair is ``(Σ acc_i, m)``. Adding or
    removing one client moves it by at most ``(1, 1)``, so the client-level scope
    ``federation`` is charged; one example moves it by at most ``(1/n_i, 0)``, so with
    sample-level DP also each evaluated client's example-level scope is charged (its
    example-level ε must include this release).

  Rebuilding a count as ``accuracy × Σn`` from an unweighted mean (what this module did
  before) is no count: one example of a small client moves it by ``Σn / (m·n_i)``,
  far beyond ``√2``. The evaluation sample is not secret (drawn from a seed), so
  no amplification by sampling is claimed (sample rate 1, one step per round). The
  study composes these mechanisms with the trials' own ledgers (``privacy.json``) and,
  with ``privacy_budget``, reserves a trial's whole evaluation before it starts.

The noise comes from the OS's CSPRNG when the trial's ``privacy.noise = "secure"`` (the
default); with ``"seeded"`` it is drawn from (study seed, trial slot, round): reproducible,
and not private. The exact (un-noised) ``fed_val_*`` values stay in each trial's run
directory (``metrics.json``): the ε of the noised evaluation covers only what the tuner
saw (``privacy.json`` says so).

References
----------
.. [1] K. Kuo, P. Thaker, M. Khodak, J. Nguyen, D. Jiang, A. Talwalkar and V. Smith,
   "On Noisy Evaluation in Federated Hyperparameter Tuning", MLSys 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sandbox.core.privacy import FEDERATION, PrivacyLedger
from sandbox.core.privacy.ledger import Mechanism
from sandbox.core.privacy.noise import gaussian
from sandbox.core.results import SELECTION_METRIC

if TYPE_CHECKING:
    from sandbox.core.config import Config

#: Ledger kind of one noised evaluation.
EVAL_KIND = "eval-gaussian"
#: L2 sensitivity of the released (sum, count) pair, in either unit (see the module doc).
SENSITIVITY = math.sqrt(2.0)


@dataclass(frozen=True)
class Release:
    """One round's noised evaluation before the noise: the pair and who pays for it."""

    values: np.ndarray  # (sum, count)
    scopes: list[str]  # ledger scopes charged one Gaussian mechanism each


@dataclass(frozen=True)
class Evaluation:
    """How a trial's rounds are scored (see the module docstring).

    Parameters
    ----------
    fraction : float
        0: server-held validation set; in (0, 1]: federated validation on that
        fraction of the clients.
    noise_multiplier : float
        ``z``: Gaussian noise of std ``z·√2`` on the released (sum, count) pair (0: none).
    seed : int
        Seed of the noise stream with seeded noise (from the study seed and the slot).
    """

    fraction: float = 0.0
    noise_multiplier: float = 0.0
    seed: int = 0

    @property
    def noised(self) -> bool:
        return self.noise_multiplier > 0

    def for_trial(self, cfg: Config, source: str = "") -> TrialEvaluation:
        return TrialEvaluation(self, cfg, source)

    def reserve(self, cfg: Config, source: str = "") -> PrivacyLedger:
        """Worst-case ledger of one trial's noised evaluations: every round, every client,
        in both units (which one applies is known only from the run's rows)."""
        ledger = PrivacyLedger.for_config(cfg)
        if self.noised:
            scopes = [FEDERATION, *(f"client-{pid}" for pid in range(cfg.data.num_clients))]
            for server_round in range(1, cfg.rounds + 1):
                for scope in scopes:
                    ledger.add(self.mechanism(scope, server_round, source))
        return ledger

    def mechanism(self, scope: str, server_round: int, source: str) -> Mechanism:
        return Mechanism(scope, EVAL_KIND, server_round, self.noise_multiplier, 1.0, 1, source)


class TrialEvaluation:
    """One trial's scorer: the objective value of each round and the ledger it spent."""

    def __init__(self, evaluation: Evaluation, cfg: Config, source: str) -> None:
        self.evaluation = evaluation
        self.cfg = cfg
        self.source = source
        self.ledger = PrivacyLedger.for_config(cfg)

    def score(self, server_round: int, row: dict[str, Any]) -> float:
        """The objective value of ``server_round`` (NaN if no client evaluated)."""
        evaluation = self.evaluation
        if not evaluation.fraction:
            return float(row[SELECTION_METRIC])
        if row.get("fed_val_accuracy") is None:
            return math.nan
        if not evaluation.noised:
            return float(row["fed_val_accuracy"])
        release = self.release(row)
        rng = None if self.cfg.privacy.secure_rng else np.random.default_rng(
            np.random.SeedSequence([evaluation.seed, server_round]))
        noisy = release.values + gaussian(2, evaluation.noise_multiplier * SENSITIVITY, rng)
        for scope in release.scopes:
            self.ledger.add(evaluation.mechanism(scope, server_round, self.source))
        return float(np.clip(noisy[0] / max(noisy[1], 1.0), 0.0, 1.0))

    def release(self, row: dict[str, Any]) -> Release:
        """The (sum, count) pair a round's ``fed_val_accuracy`` stands for, and its scopes.

        Its L2 sensitivity is :data:`SENSITIVITY` in the unit of every scope charged.
        """
        accuracy = float(row["fed_val_accuracy"])
        evaluated = [int(pid) for pid in row["fed_val_partitions"]]
        client_scopes = [f"client-{pid}" for pid in evaluated]
        if row["fed_val_weighted"]:  # Σc/Σn: the count of correct predictions is exact
            examples = int(row["fed_val_examples"])
            return Release(np.array([round(accuracy * examples), examples], float),
                           client_scopes)
        scopes = [FEDERATION, *(client_scopes if self.cfg.privacy.sample.enabled else [])]
        return Release(np.array([accuracy * len(evaluated), len(evaluated)], float), scopes)
