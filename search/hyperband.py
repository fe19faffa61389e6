"""Hyperband over asynchronous successive halving, with brackets keyed on a trial's *slot*.

Optuna's own ``HyperbandPruner`` picks a trial's bracket from a hash of its number, and a
trial re-run after an interruption gets a new number. :class:`SlotHyperbandPruner` keys the
bracket on the trial's slot (a user attribute: the number of finished trials when it was
asked), so a resumed study prunes exactly like an uninterrupted one. It reads only public
trial data (intermediate values, user attributes, states) and keeps no state of its own.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import TYPE_CHECKING

from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

if TYPE_CHECKING:
    import optuna

# WAITING trials have reported nothing; every other state may hold rung values.
_REPORTING = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class SlotHyperbandPruner(BasePruner):
    """Hyperband whose brackets run asynchronous successive halving (ASHA).

    Hyperband [1]_ hedges over how aggressively to stop trials early by running several
    *brackets* of successive halving [2]_; bracket ``b`` has minimum early-stopping rate
    ``b``, so its rungs lie at steps ``min_resource * reduction_factor**(b + k)``,
    ``k = 0, 1, ...``, below ``max_resource``. Promotion is asynchronous as in ASHA [3]_:
    a trial that reaches a rung goes on iff its value there is among the best
    ``max(n // reduction_factor, 1)`` of the ``n`` values at that rung of the trials of
    its bracket that reached it (itself included) -- the rule of Optuna's
    ``SuccessiveHalvingPruner``. A trial never waits for others, and a trial that
    reached ``max_resource`` (the top rung, where Hyperband's budget per trial ends) is
    never pruned.

    There are ``floor(log_eta(max_resource / min_resource)) + 1`` brackets
    (``eta = reduction_factor``). Slots are dealt to brackets deterministically in
    proportion to Optuna's per-bracket budgets
    ``ceil(n_brackets * eta**s / (s + 1))``, ``s = n_brackets - 1 - b``: slot
    ``k`` falls in the bracket where ``k mod (sum of budgets)`` lands on the cumulative
    budgets.

    Parameters
    ----------
    min_resource : int
        Step of the first rung of bracket 0 (``r`` in [1]_), at least 1.
    max_resource : int
        Last step a trial reports (``R`` in [1]_), at least ``min_resource``.
    reduction_factor : int
        ``eta``: a rung promotes about one trial in ``eta``; at least 2.
    slot_attr : str
        Trial user attribute holding the slot; trials without it use their number.
    exclude_attr : str or None
        Study user attribute listing trial numbers to leave out of every rung (trials
        interrupted and re-run under the same slot would otherwise count twice).
    before_attr : str or None
        Trial user attribute holding a slot: only trials whose slots lie below it are the
        trial's rung peers (parallel workers set it to the first slot of the trial's
        batch, so peers running at the same time never decide each other's fate). Trials
        without it compare with every other trial.

    Notes
    -----
    The pruner is stateless: a rung is judged when a report first reaches or passes its
    step (the trial's previous report was below it), with the value of that report.
    Other trials' values at a rung are read the same way, so ``should_prune`` is
    expected after every ``report``, as Optuna's pruners assume.

    References
    ----------
    .. [1] L. Li, K. Jamieson, G. DeSalvo, A. Rostamizadeh and A. Talwalkar, "Hyperband:
       A Novel Bandit-Based Approach to Hyperparameter Optimization", JMLR 18(185):1-52,
       2018.
    .. [2] K. Jamieson and A. Talwalkar, "Non-stochastic Best Arm Identification and
       Hyperparameter Optimization", AISTATS 2016.
    .. [3] L. Li, K. Jamieson, A. Rostamizadeh, E. Gonina, J. Ben-tzur, M. Hardt,
       B. Recht and A. Talwalkar, "A System for Massively Parallel Hyperparameter
       Tuning", MLSys 2020.

    Examples
    --------
    >>> pruner = SlotHyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    >>> pruner.n_brackets, pruner.budgets, pruner.rungs(1)
    (3, [9, 5, 3], [3])
    """

    def __init__(self, min_resource: int = 1, max_resource: int = 81,
                 reduction_factor: int = 3, *, slot_attr: str = "slot",
                 exclude_attr: str | None = None, before_attr: str | None = None) -> None:
        if not 1 <= min_resource <= max_resource:
            raise ValueError(f"need 1 <= min_resource <= max_resource, got {min_resource} "
                             f"and {max_resource}")
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be at least 2, got {reduction_factor}")
        self.min_resource = int(min_resource)
        self.max_resource = int(max_resource)
        self.reduction_factor = int(reduction_factor)
        self.slot_attr = slot_attr
        self.exclude_attr = exclude_attr
        self.before_attr = before_attr
        # Integer powers, not math.log: log(1000, 10) < 3 would lose a bracket.
        self.n_brackets = 1
        while min_resource * reduction_factor ** self.n_brackets <= max_resource:
            self.n_brackets += 1
        self.budgets = [math.ceil(self.n_brackets * reduction_factor ** s / (s + 1))
                        for s in range(self.n_brackets - 1, -1, -1)]
        self._cumulative = list(accumulate(self.budgets))

    def bracket(self, trial: optuna.trial.FrozenTrial) -> int:
        """Bracket of ``trial``, from its slot (its number when it has none)."""
        slot = int(trial.user_attrs.get(self.slot_attr, trial.number))
        position = slot % self._cumulative[-1]
        return next(b for b, end in enumerate(self._cumulative) if position < end)

    def rungs(self, bracket: int) -> list[int]:
        """Steps at which bracket ``bracket`` judges its trials (below ``max_resource``)."""
        steps = []
        step = self.min_resource * self.reduction_factor ** bracket
        while step < self.max_resource:
            steps.append(step)
            step *= self.reduction_factor
        return steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        """Prune ``trial`` iff its latest report fails a rung it has just reached."""
        step = trial.last_step
        if step is None:
            return False
        earlier = [s for s in trial.intermediate_values if s < step]
        previous = max(earlier) if earlier else -math.inf
        bracket = self.bracket(trial)
        crossed = [r for r in self.rungs(bracket) if previous < r <= step]
        if not crossed:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        excluded = set(study.user_attrs.get(self.exclude_attr, [])) if self.exclude_attr else set()
        before = trial.user_attrs.get(self.before_attr) if self.before_attr else None
        peers = [t for t in study.get_trials(deepcopy=False, states=_REPORTING)
                 if t.number != trial.number and t.number not in excluded
                 and self.bracket(t) == bracket
                 and (before is None or int(t.user_attrs.get(self.slot_attr, -1)) < before)]
        for rung in crossed:
            values = [v for t in peers if (v := value_at(t, rung)) is not None
                      and not math.isnan(v)]
            if not promotable(value, [*values, value], self.reduction_factor,
                              study.direction):
                return True
        return False


def value_at(trial: optuna.trial.FrozenTrial, rung: int) -> float | None:
    """Value a trial was judged with at ``rung``: its first report at or past that step."""
    reached = [s for s in trial.intermediate_values if s >= rung]
    return trial.intermediate_values[min(reached)] if reached else None


def promotable(value: float, values: list[float], reduction_factor: int,
               direction: StudyDirection) -> bool:
    """Whether ``value`` is among the best ``max(len(values) // eta, 1)`` of ``values``.

    ``values`` includes ``value`` itself; ties are promoted, as in Optuna's
    ``SuccessiveHalvingPruner``.
    """
    keep = max(len(values) // reduction_factor, 1)
    maximize = direction == StudyDirection.MAXIMIZE
    threshold = sorted(values, reverse=maximize)[keep - 1]
    return value >= threshold if maximize else value <= threshold
