"""What the objective "accuracy" reads each round: exact, subsampled, or DP-noised.

A tuner is only as good as the evaluations it ranks. Kuo et al. [1]_ show that in
federated tuning, evaluating on a subsample of clients and adding DP noise to the
evaluation can drag a tuner down to random search. :class:`Evaluation` makes that
measurable here:

* ``fraction = 0`` (default): the server-held validation set (``central_val_accuracy``),
  exact and free of any privacy cost;
* ``fraction > 0``: the *federated* validation accuracy (``fed_val_accuracy``) of the
  clients' local validation splits, on the seeded subsample of clients the engine draws
  for evaluation (``federation.fraction_evaluate = fraction``; the same clients for every
  trial at a given round);
* ``noise_multiplier = z > 0``: the aggregated counts (correct predictions, examples) are
  released with Gaussian noise of standard deviation ``z·√2`` each; one example of a
  client changes the count vector by at most ``(1, 1)``, L2 norm ``√2`` (add/remove
  adjacency), so every evaluated client's scope ``client-<pid>`` is charged one Gaussian
  mechanism with noise multiplier ``z`` per round (sample rate 1, one step). The study
  composes these with the trials' own ledgers (``privacy.json``) and, with
  ``privacy_budget``, reserves a trial's whole evaluation before the trial starts.

The noise is seeded from (study seed, trial slot, round), so studies are reproducible;
with ``privacy.secure_rng = true`` it comes from the OS's CSPRNG instead.

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

from sandbox.core.privacy import PrivacyLedger
from sandbox.core.privacy.ledger import Mechanism
from sandbox.core.privacy.noise import gaussian
from sandbox.core.results import SELECTION_METRIC
from sandbox.core.sampling import clients_for_round

if TYPE_CHECKING:
    from sandbox.core.config import Config

#: Ledger kind of one noised evaluation.
EVAL_KIND = "eval-gaussian"


@dataclass(frozen=True)
class Evaluation:
    """How a trial's rounds are scored (see the module docstring).

    Parameters
    ----------
    fraction : float
        0: server-held validation set; in (0, 1]: federated validation on that
        fraction of the clients.
    noise_multiplier : float
        ``z``: Gaussian noise of std ``z·√2`` on the aggregated counts (0: none).
    seed : int
        Seed of the noise stream (derived from the study seed and the trial slot).
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
        """Worst-case ledger of one trial's noised evaluations: every client, every round."""
        ledger = PrivacyLedger(delta=cfg.privacy.delta, data_fingerprint=cfg.data_fingerprint())
        if self.noised:
            for server_round in range(1, cfg.rounds + 1):
                for pid in range(cfg.data.num_clients):
                    ledger.add(self.mechanism(pid, server_round, source))
        return ledger

    def mechanism(self, pid: int, server_round: int, source: str) -> Mechanism:
        return Mechanism(f"client-{pid}", EVAL_KIND, server_round, self.noise_multiplier,
                         1.0, 1, source)


class TrialEvaluation:
    """One trial's scorer: the objective value of each round and the ledger it spent."""

    def __init__(self, evaluation: Evaluation, cfg: Config, source: str) -> None:
        self.evaluation = evaluation
        self.cfg = cfg
        self.source = source
        self.ledger = PrivacyLedger(delta=cfg.privacy.delta,
                                    data_fingerprint=cfg.data_fingerprint())
        self.validation_sizes: dict[int, int] = {}
        if evaluation.noised:
            from sandbox.core.experiment import load_experiment_data

            data = load_experiment_data(cfg)
            self.validation_sizes = {pid: len(c.y_val) for pid, c in enumerate(data.clients)}

    def score(self, server_round: int, row: dict[str, Any]) -> float:
        """The objective value of ``server_round`` (NaN if no client evaluated)."""
        evaluation = self.evaluation
        if not evaluation.fraction:
            return float(row[SELECTION_METRIC])
        accuracy = row.get("fed_val_accuracy")
        if accuracy is None:
            return math.nan
        if not evaluation.noised:
            return float(accuracy)
        evaluated = self.evaluated_partitions(server_round, row)
        examples = sum(self.validation_sizes[pid] for pid in evaluated)
        counts = np.array([float(accuracy) * examples, float(examples)])
        rng = None if self.cfg.privacy.secure_rng else np.random.default_rng(
            np.random.SeedSequence([evaluation.seed, server_round]))
        noisy = counts + gaussian(2, evaluation.noise_multiplier * math.sqrt(2.0), rng)
        for pid in evaluated:
            self.ledger.add(evaluation.mechanism(pid, server_round, self.source))
        return float(np.clip(noisy[0] / max(noisy[1], 1.0), 0.0, 1.0))

    def evaluated_partitions(self, server_round: int, row: dict[str, Any]) -> list[int]:
        """Partition ids whose evaluation is in ``fed_val_accuracy`` of ``server_round``.

        The engine draws evaluation clients with ``core.sampling.clients_for_round`` (run
        seed, round, "evaluate", ``fraction_evaluate``); clients whose evaluation failed
        (``row["failures"]["evaluate"]``) are not in the aggregate.
        """
        chosen = clients_for_round(self.cfg.seed, server_round, "evaluate",
                                   range(self.cfg.data.num_clients),
                                   self.cfg.federation.fraction_evaluate)
        failed = (row.get("failures") or {}).get("evaluate", {})
        return [pid for pid in chosen if str(pid) not in failed and pid not in failed]
