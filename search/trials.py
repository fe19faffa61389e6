"""What every backend does around one trial: seeds, the privacy budget, the ledgers.

Both backends (Optuna, KerasTuner) run a trial through :func:`run_budgeted_trial`, so the
study's ``privacy_budget`` and the noised evaluation (:mod:`search.evaluation`) are
enforced and accounted the same way:

* the ledgers of every finished trial (its run's and its noised evaluations') compose
  into the *spent* ledger (sequential composition per scope); a run that a later trial
  continued from its checkpoint (KerasTuner's Hyperband) counts once, in the later
  trial's ledger;
* a trial with a noised evaluation reserves its worst case (every client, every round)
  before it starts;
* if spent + reserved already exceeds the budget, the trial does not run (recorded as a
  budget stop with 0 rounds, never complete); otherwise the run gets
  ``privacy.budget_epsilon = privacy_budget`` with the spent + reserved ledger as its
  prior, so the engine stops it before the round that would exceed the budget;
* any budget stop ends the search.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from sandbox.core.errors import ConfigError
from sandbox.core.results import StopReason
from search.evaluation import Evaluation
from search.objective import (
    TrialOutcome,
    round_cost_bound,
    run_trial,
    superseded_runs,
    trial_ledgers,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

    from sandbox.core.config import Config
    from sandbox.core.privacy import PrivacyLedger
    from search.config import Study


def mixed_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integer parts (consecutive seeds correlate).

    Never 0: KerasTuner replaces a falsy seed by a random one.
    """
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]
    return int(state) % (2**31 - 2) + 1


def spent_ledgers(attrs: Iterable[dict[str, Any]]) -> list[PrivacyLedger]:
    """Every ledger of the trials with user attributes ``attrs``, each spending once."""
    records = list(attrs)
    superseded = superseded_runs(records)
    return [led for a in records for led in trial_ledgers(a, superseded)]


def evaluation_for(study: Study, slot: int) -> Evaluation:
    settings = study.settings
    return Evaluation(settings.eval_fraction, settings.eval_noise_multiplier,
                      seed=mixed_seed(settings.seed, slot, 7))


def run_budgeted_trial(study: Study, values: dict[str, Any], *, name: str, slot: int,
                       spent: Iterable[dict[str, Any]], rounds: int | None = None,
                       report: Callable[[int, float], None] | None = None,
                       stop_after: int | None = None, continue_run: Path | None = None,
                       earlier: TrialOutcome | None = None, reserved_client_rounds: int = 0,
                       ) -> tuple[TrialOutcome, dict[str, Any]]:
    """Run one trial under the study's budget; return its outcome and user attributes.

    ``spent`` holds the user attributes of the finished trials whose ledgers count;
    ``reserved_client_rounds`` is kept for trials running beside this one (lower slots
    of its batch, :func:`trial_cost_bound` each); ``stop_after``, ``continue_run`` and
    ``earlier`` go to :func:`~search.objective.run_trial` (Hyperband rungs; no privacy
    budget then).
    """
    evaluation = evaluation_for(study, slot)
    spent = list(spent)
    try:
        cfg = study.trial_config(values, rounds=rounds, name=name, slot=slot)
    except ConfigError as exc:
        outcome = TrialOutcome.invalid(exc)
    else:
        outcome = _run_within_budget(study, cfg, evaluation, spent, report,
                                     stop_after=stop_after, continue_run=continue_run,
                                     earlier=earlier,
                                     client_round_limit=client_rounds_left(
                                         study, spent, reserved=reserved_client_rounds))
    attrs = outcome.attributes()
    if continue_run is not None and outcome.run_dir:
        attrs["continued_run"] = str(earlier.run_dir)
    if outcome.eval_ledger is not None and outcome.eval_ledger.mechanisms:
        path = study.work_directory / "eval_ledgers" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        outcome.eval_ledger.save(path)
        attrs["eval_ledger"] = str(path)
        attrs["eval_epsilon"] = max(outcome.eval_ledger.epsilon(
            s, study.base.privacy.accountant) for s in outcome.eval_ledger.scopes)
    return outcome, attrs


def _run_within_budget(study: Study, cfg: Config, evaluation: Evaluation,
                       spent: list[dict[str, Any]], report, **rungs) -> TrialOutcome:
    from sandbox.core.privacy import PrivacyLedger

    budget = study.settings.privacy_budget
    if not budget:
        return run_trial(cfg, report=report, evaluation=evaluation, **rungs)
    parts = spent_ledgers(spent)
    reserved = evaluation.reserve(cfg, source=cfg.name)
    if reserved.mechanisms:
        parts.append(reserved)
    prior = PrivacyLedger.compose(parts) if parts else None
    accountant = study.base.privacy.accountant
    if prior is not None:
        worst = max(prior.scopes, key=lambda s: prior.epsilon(s, accountant))
        projected = prior.epsilon(worst, accountant)
        if projected > budget:
            return TrialOutcome(StopReason.BUDGET, reason=(
                f"privacy budget: spent + reserved evaluation ε = {projected:.3g} > "
                f"{budget:g} (scope {worst}) before round 1"))
    if cfg.privacy.any_dp:  # the engine stops the run before the exceeding round
        cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(
            update={"budget_epsilon": budget})})
    return run_trial(cfg, report=report, prior_ledger=prior, evaluation=evaluation, **rungs)


def client_rounds_left(study: Study, spent: Iterable[dict[str, Any]], *,
                       reserved: int = 0) -> float | None:
    """The study's client-round budget minus what ``spent`` trials used and ``reserved``.

    ``None``: the study has no client-round budget.
    """
    budget = study.settings.client_round_budget
    if not budget:
        return None
    return budget - reserved - sum(attrs.get("client_rounds", 0) for attrs in spent)


def worst_round_cost(study: Study) -> int:
    """Most client-rounds one round of any trial of ``study`` can take.

    The worst round trains every client (``fraction_train`` may be searched up to 1, and
    a Poisson sample may hold everyone) and evaluates the study's fraction (every client
    if the space searches ``federation.fraction_evaluate``).
    """
    searched = any(p.key == "federation.fraction_evaluate" for p in study.space.params)
    fraction = study.settings.eval_fraction or (
        1.0 if searched else study.base.federation.fraction_evaluate)
    return round_cost_bound(study.base, every_client_trains=True, evaluate_fraction=fraction)


def trial_cost_bound(study: Study, values: dict[str, Any]) -> int:
    """Most client-rounds the trial with parameters ``values`` can take (0: invalid)."""
    try:
        cfg = study.trial_config(values)
    except ConfigError:
        return 0  # the trial fails before its first round
    return cfg.rounds * round_cost_bound(cfg)


def client_budget_spent(study: Study, spent: Iterable[dict[str, Any]], *,
                        reserved: int = 0) -> bool:
    """Too little budget left for one more round of any trial (so no trial overruns it)."""
    left = client_rounds_left(study, spent, reserved=reserved)
    return left is not None and left < worst_round_cost(study)


def is_budget_stop(attrs: dict[str, Any]) -> bool:
    return bool(attrs.get("budget_stop"))


def interrupted_spend(optuna_study) -> list[dict[str, Any]]:
    """What the rounds of interrupted trials spent, as user attributes of finished trials.

    A killed worker's run stays in its ``.partial`` directory, recorded on its trial from
    round 1 on: its ledger (``run_dir``) and its client-rounds (from ``metrics.json``)
    count towards the study's budgets like a finished trial's.
    """
    import json
    from pathlib import Path

    from sandbox.engine.checkpoint import checkpoint_spend
    from search.study_store import interrupted_trials

    numbers = interrupted_trials(optuna_study)
    spent = []
    for trial in optuna_study.get_trials(deepcopy=False):
        run_dir = trial.user_attrs.get("run_dir", "")
        if trial.number not in numbers or not run_dir:
            continue
        metrics = Path(run_dir) / "metrics.json"
        if metrics.is_file():
            rows = json.loads(metrics.read_text())
        else:  # killed: only its last checkpoint says what it spent
            rows = (checkpoint_spend(Path(run_dir)) or ([], None))[0]
        spent.append({"run_dir": run_dir, "client_rounds": sum(
            len(r.get("train_partitions", [])) + len(r.get("fed_val_partitions", []))
            for r in rows if r.get("round", 0) >= 1)})
    return spent
