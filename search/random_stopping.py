"""Whether the Papernot–Steinke random-stopping bound holds for a study, and its value.

Papernot & Steinke [1]_ bound the privacy of hyperparameter tuning that runs one private
algorithm ``Q`` (one trial: draw hyperparameters at random, train, score) a random
number of times ``K`` and releases *only the best* run. With ``K ~ Poisson(μ)`` and ``Q``
(λ, ε_λ)-RDP, the whole search is (λ, ε_λ + μ·δ̂ + log μ / (λ − 1))-RDP
(:func:`sandbox.core.privacy.tuning.random_stopping_epsilon`). Each premise is checked
here, and the bound is reported only when all hold; otherwise ``privacy.json`` and
``report.md`` say which failed:

* ``K`` is the Poisson draw itself, made where nobody can predict it: the study drew it
  from the OS's CSPRNG (``privacy.noise = "secure"``; :mod:`search.study_store`), never
  truncated, and the search ran exactly ``K`` trials (no budget stopped it);
* the trials are i.i.d. runs of one ``Q``: Optuna's random sampler with proposals from a
  secret key and no redraw of repeats; no pruner and no adaptive sampler or oracle,
  whose proposals and stops depend on earlier trials' results;
* only the best trial is released: ``study.release = "best_only"`` (no per-trial
  results in the report; they stay in the private work directory);
* ``Q`` has one RDP guarantee for every setting it may draw: the space searches no key
  that shapes the DP mechanisms (:data:`MECHANISM_KEYS`), and every trial applied the
  same mechanism per scope and kind. ``ε_λ`` is then that mechanism composed over all
  rounds in every scope (a client sampled in every round), the worst case of ``Q``
  whatever its sampling did;
* every trial's ε is an upper bound (no seeded noise, Poisson DP-SGD batches).

References
----------
.. [1] N. Papernot and T. Steinke, "Hyperparameter Tuning with Renyi Differential
   Privacy", ICLR 2022.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from search.study_store import N_TRIALS_DRAWN, N_TRIALS_SOURCE, finished_trials

if TYPE_CHECKING:
    import optuna

    from sandbox.core.privacy import PrivacyLedger
    from search.config import Study

#: Experiment keys (prefixes) that set a trial's DP mechanisms: noise, sampling rates,
#: steps, rounds, the data behind the rates. A space that searches one has trials with
#: different guarantees, and the trials run do not bound the settings never drawn.
MECHANISM_KEYS = ("privacy.", "train.batch_size", "train.local_epochs", "train.local_steps",
                  "federation.fraction_train", "rounds", "data.")


def random_stopping(study: Study, optuna_study: optuna.Study,
                    ledgers: dict[int, list[PrivacyLedger]], delta: float) -> dict[str, Any]:
    """The bound and its premises, or ``applies: false`` with every premise that failed.

    ``ledgers`` maps each trial number to the ledgers it spent (run and evaluation).
    """
    reasons = _failed_premises(study, optuna_study)
    histories = _worst_case_histories(ledgers, study.base.rounds)
    if histories is None:
        reasons.append("the trials applied different DP mechanisms: Q needs one guarantee "
                       "for every setting it may draw")
    caveats = sorted({c for parts in ledgers.values() for led in parts for c in led.caveats})
    reasons += [f"a trial's ε is not an upper bound ({c})" for c in caveats]
    if reasons:
        return {"applies": False, "why": "; ".join(reasons), "failed_premises": reasons}
    from sandbox.core.privacy.tuning import random_stopping_epsilon

    bound = random_stopping_epsilon(histories, delta,
                                    mean_trials=float(study.settings.n_trials))
    return bound | {"premises": "K ~ Poisson(n_trials) from the OS's CSPRNG, i.i.d. random "
                                "proposals from a secret key, no pruning, best trial only "
                                "released, one mechanism per scope in every trial (ε_λ: "
                                f"{study.base.rounds} rounds in every scope)"}


def _failed_premises(study: Study, optuna_study: optuna.Study) -> list[str]:
    settings = study.settings
    reasons = []
    drawn = optuna_study.user_attrs.get(N_TRIALS_DRAWN)
    if drawn is None:
        reasons.append("the number of trials is fixed (study.trial_distribution = 'fixed'); "
                       "the bound needs K ~ Poisson")
    elif optuna_study.user_attrs.get(N_TRIALS_SOURCE) != "secure":
        reasons.append("the trial count K was drawn from the study seed (privacy.noise = "
                       "'seeded'): whoever knows the seed knows K")
    elif len(finished_trials(optuna_study)) != drawn:
        reasons.append(f"the search stopped after {len(finished_trials(optuna_study))} of "
                       f"the {drawn} trials drawn (a budget stopped it)")
    if settings.backend == "kerastuner":
        reasons.append(f"KerasTuner's {settings.oracle} oracle " + (
            "never repeats a point it tried and is seeded from the study seed: its trials "
            "are not i.i.d. draws" if settings.oracle == "random"
            else "adapts its proposals to earlier trials' results"))
    elif settings.sampler != "random":
        reasons.append(f"sampler '{settings.sampler}' adapts its proposals to earlier "
                       "trials' results; the bound covers non-adaptive random search")
    if settings.backend == "optuna" and settings.pruner != "none":
        reasons.append(f"pruner '{settings.pruner}' stops trials on other trials' results")
    if settings.release != "best_only":
        reasons.append("study.release = 'all' publishes every trial's results; the bound "
                       "covers releasing the best trial only (study.release = 'best_only')")
    searched = [p.key for p in study.space.params if p.key.startswith(MECHANISM_KEYS)]
    if searched:
        reasons.append(f"the space searches {', '.join(searched)}, which shape the trials' "
                       "DP mechanisms: Q needs one guarantee for every setting")
    return reasons


def _worst_case_histories(ledgers: dict[int, list[PrivacyLedger]], rounds: int
                          ) -> list[list[tuple[float, float, int]]] | None:
    """Per scope, each kind's mechanism over all ``rounds``; ``None`` if trials differ."""
    entries: dict[tuple[str, str], set] = {}
    for parts in ledgers.values():
        for ledger in parts:
            for m in ledger.mechanisms:
                entries.setdefault((m.scope, m.kind), set()).add(m.entry)
    if any(len(seen) > 1 for seen in entries.values()):
        return None
    per_scope: dict[str, list] = {}
    for (scope, _), seen in entries.items():
        per_scope.setdefault(scope, []).extend([next(iter(seen))] * rounds)
    return list(per_scope.values())
