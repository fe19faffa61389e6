"""The results format: what a run returns and the columns its files hold.

A finished run's directory (written by :mod:`sandbox.engine.rundir`)::

    config.toml            resolved config (re-runnable with `fedsandbox run`)
    run.json               name, config hash, seed, versions, wall time, stop reason,
                           final metrics, ε, whether it is an upper bound and why not
                           (epsilon_upper_bound, epsilon_caveats), noise source;
                           keras_partitions and evaluation_framework (mixed), attack
                           (kind, malicious partitions)
    metrics.json / .csv    one row per round (round 0 = initial model), METRIC_COLUMNS:
                           central_val_* (server-held validation set), fed_val_*
                           (clients' validation splits), central_test_* (global test
                           set, reported only), train_loss, ε so far, client
                           failures (counts and reasons by partition id); a mixed,
                           heterogeneous or attacked federation adds FRAMEWORK_COLUMNS,
                           COMPUTE_COLUMNS, ATTACK_COLUMNS;
                           deterministic: same config + seed -> the same bytes (with
                           DP only under privacy.noise = "seeded": the default draws
                           fresh noise and samples in every run)
    timings.json           wall seconds per row (row 0: start-up and the initial model's
                           evaluation); the only non-deterministic numbers
    partition_stats.json   samples and label histogram per client
    participation.json     the partition ids chosen each round, for training and evaluation
    partitions.png         the same as stacked bars
    metrics.png            accuracy and loss per round
    weights.npz            final global weights, canonical layout, named arrays
    privacy.json           ledger (every DP mechanism with its noise source, ε per scope
                           under RDP and PRV, whether those are upper bounds), what ε
                           rests on (assumptions), clients' own accountant ε, budget
                           stop, audit results
    privacy.png            ε per round: median and min-max band over clients, federation
    tensorboard/           scalar event files
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any


class StopReason(StrEnum):
    """Why a run ended."""

    FINISHED = "finished"  # every configured round ran
    BUDGET = "budget"  # privacy.budget_epsilon stopped it before the exceeding round
    PRUNED = "pruned"  # a round callback stopped it on purpose (a pruned tuning trial)
    DIVERGED = "diverged"  # the global model's loss became non-finite
    FAILED = "failed"  # an error (a bug, a crashed client, a bad file found mid-run)
    INTERRUPTED = "interrupted"  # Ctrl-C / SIGTERM


PRIVACY_COLUMNS = ["eps_client_max", "eps_client_median", "eps_federation"]
#: Which data each column comes from. Validation columns may be used to choose (searches,
#: pruning, "best round"); test columns are only reported.
VALIDATION_COLUMNS = ["central_val_accuracy", "central_val_loss",  # server-held val set
                      "fed_val_accuracy", "fed_val_loss"]  # clients' local val splits
TEST_COLUMNS = ["central_test_accuracy", "central_test_loss"]  # global test set
#: Sampled clients that failed (raised, or gave no reply within the timeout) per round;
#: ``failures`` holds ``{"train"|"evaluate": {partition id: "Type: message"}}`` or None.
FAILURE_COLUMNS = ["train_failures", "evaluate_failures", "failures"]
#: Who took part in a round (``None`` in round 0): ``train_partitions`` and
#: ``fed_val_partitions`` list the partition ids whose training / evaluation replies were
#: valid, ``fed_val_examples`` is the sum of their validation examples, and
#: ``fed_val_weighted`` says whether ``fed_val_*`` weigh each client by its examples
#: (``False`` under client-level DP, where every client counts once).
PARTICIPATION_COLUMNS = ["train_partitions", "fed_val_partitions", "fed_val_examples",
                         "fed_val_weighted"]
METRIC_COLUMNS = [
    "round", *VALIDATION_COLUMNS[:2], *TEST_COLUMNS, "train_loss", *VALIDATION_COLUMNS[2:],
    *PRIVACY_COLUMNS, *FAILURE_COLUMNS, *PARTICIPATION_COLUMNS,
]
#: ``framework = "mixed"``: the client metrics of the torch and of the Keras clients,
#: weighted as the columns over all clients (by examples, or equally under client DP).
FRAMEWORK_COLUMNS = [f"{metric}_{framework}" for metric in
                     ("train_loss", "fed_val_loss", "fed_val_accuracy")
                     for framework in ("torch", "keras")]
#: ``[heterogeneity]``: each valid training reply's optimizer steps and examples
#: processed, ``{partition id: count}`` (JSON cells in metrics.csv).
COMPUTE_COLUMNS = ["local_steps", "local_examples"]
#: ``[attack]``: the malicious partitions among the round's valid training replies.
ATTACK_COLUMNS = ["malicious_partitions"]
#: metrics.csv columns that hold a dict or list: one JSON cell each.
JSON_COLUMNS = ("failures", "train_partitions", "fed_val_partitions", *COMPUTE_COLUMNS,
                *ATTACK_COLUMNS)
#: The metric that picks a run's best round (and a sweep's or search's best run).
SELECTION_METRIC = "central_val_accuracy"
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


def best_row(rows: list[dict[str, float | None]], key: str = SELECTION_METRIC
             ) -> dict[str, float | None] | None:
    """The row (round >= 1) with the highest validation ``key``; the first one on ties.

    Selection never looks at test columns: choosing the round by test accuracy and then
    reporting that accuracy would be optimistically biased.
    """
    if key in TEST_COLUMNS:
        raise ValueError(f"{key} is a test metric; select on one of {VALIDATION_COLUMNS}")
    scored = [r for r in rows if r["round"] >= 1 and r.get(key) is not None]
    return max(scored, key=lambda r: r[key], default=None)


def run_epsilon(scopes: dict[str, dict[str, float]], accountant: str) -> float | None:
    """The ε of a run: the largest ε(δ) over its privacy scopes under ``accountant``.

    Every scope (one client's examples under DP-SGD, the federation's clients under
    client-level DP) is a separate guarantee; the run's ε is the weakest of them.
    ``None`` when no DP mechanism ran.
    """
    values = [entry[accountant] for entry in scopes.values()]
    return max(values) if values else None


@dataclass(frozen=True)
class BudgetStop:
    """Where and why ``privacy.budget_epsilon`` stopped a run (before ``before_round``)."""

    before_round: int
    scope: str
    projected_epsilon: float
    reason: str


@dataclass
class RunResult:
    """What :func:`sandbox.run` returns: plain Python data, no framework objects.

    Attributes
    ----------
    rounds : list of dict
        One row per round (``METRIC_COLUMNS``; round 0 = initial model).
    final : dict
        The last row's non-empty metrics.
    epsilon : float or None
        :func:`run_epsilon` of the run (``None`` without DP).
    stop_reason : StopReason
        ``FINISHED`` or ``BUDGET`` for a returned result.
    stopped_early : BudgetStop or None
        Where and why a budget stop happened.
    round_seconds : list of float
        Wall time of each row's round.
    epsilon_caveats : list of str
        Why ``epsilon`` is not an upper bound (empty when it is one; see
        :func:`sandbox.core.privacy.assumptions.epsilon_caveats`).
    """

    run_dir: Path
    config_hash: str
    rounds: list[dict[str, float]]
    wall_s: float
    final: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    epsilon: float | None = None
    stop_reason: StopReason = StopReason.FINISHED
    stopped_early: BudgetStop | None = None
    round_seconds: list[float] = field(default_factory=list)
    epsilon_caveats: list[str] = field(default_factory=list)

    @property
    def epsilon_upper_bound(self) -> bool:
        """Whether ``epsilon`` is a proven upper bound (no caveats)."""
        return not self.epsilon_caveats

    def metric(self, key: str) -> list[float]:
        """One metric over rounds, e.g. ``result.metric("central_val_accuracy")``."""
        return [row[key] for row in self.rounds if row.get(key) is not None]
