"""One tuning trial = one federated experiment, whatever the search backend.

:func:`run_trial` runs the trial's config with :func:`sandbox.engine.api.run`, hands every
round's objective value to ``report`` (which may stop the run by raising
:class:`~sandbox.core.errors.RunPruned`) and returns the objective values and costs. The
objective "accuracy" is a *validation* accuracy: by default the server-held validation set
(``central_val_accuracy``), or the federated one of :mod:`search.evaluation`; searches,
pruning and the best trial never see test data. The test accuracy (global test set) is
recorded beside it as ``test_accuracy``, for the report only, and so is the exact
server-held validation accuracy (``central_val_accuracy``) when the objective is another.

A trial that completed no round (a privacy budget stop before round 1) did not train: it
is ``failed``, never complete and never the best trial.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.core.errors import RunFailed, SandboxError
from sandbox.core.experiment import load_experiment_data
from sandbox.core.privacy import PrivacyLedger
from sandbox.core.results import SELECTION_METRIC, StopReason
from sandbox.engine.api import run
from search.evaluation import Evaluation

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.core.config import Config


#: TrialOutcome.status by the run's stop reason (budget-stopped trials trained: complete).
STATUS = {StopReason.FINISHED: "complete", StopReason.BUDGET: "complete",
          StopReason.PRUNED: "pruned"}


@dataclass
class TrialOutcome:
    stop_reason: StopReason
    accuracy: float = float("nan")  # validation accuracy (the objective)
    test_accuracy: float = float("nan")  # held-out test accuracy, reported only
    central_val_accuracy: float = float("nan")  # exact server-held validation accuracy
    epsilon: float = float("inf")  # the run's ε (RunResult.epsilon); inf without DP
    client_compute: float = 0.0  # million per-example gradient computations
    client_rounds: float = 0  # expected client-rounds (q·N per round under client DP)
    rounds_completed: int = 0
    run_dir: str = ""
    reason: str = ""
    accuracy_per_round: list[float] = field(default_factory=list)  # what the tuner saw
    central_val_per_round: list[float] = field(default_factory=list)
    eval_ledger: PrivacyLedger | None = None  # noised evaluations' mechanisms, if any

    #: Attributes every backend stores on its trials (user attributes).
    RECORDED = ("accuracy", "test_accuracy", "central_val_accuracy", "client_compute",
                "client_rounds", "rounds_completed", "run_dir", "reason",
                "accuracy_per_round", "central_val_per_round")

    @classmethod
    def invalid(cls, exc: Exception) -> TrialOutcome:
        """A trial whose config or data failed validation: nothing ran."""
        return cls(StopReason.FAILED, reason=config_reason(exc))

    @property
    def status(self) -> str:
        """``complete``, ``pruned`` or ``failed``: the trial's state for the search backend.

        A run that completed no round did not train: ``failed`` whatever stopped it.
        """
        if self.rounds_completed == 0:
            return "failed"
        return STATUS.get(self.stop_reason, "failed")

    @property
    def budget_stopped(self) -> bool:
        return self.stop_reason is StopReason.BUDGET

    def attributes(self) -> dict[str, Any]:
        """User attributes of the trial (both backends store the same)."""
        attrs = {key: getattr(self, key) for key in self.RECORDED}
        attrs["stop_reason"] = self.stop_reason.value
        if math.isfinite(self.epsilon):
            attrs["epsilon"] = self.epsilon
        if self.budget_stopped:
            attrs["budget_stop"] = True
            attrs["budget_reason"] = self.reason
        if self.status == "failed":
            attrs["fail_reason"] = self.reason or f"no round completed ({self.stop_reason})"
        return attrs

    def value(self, objective: str) -> float:
        return float(getattr(self, objective))


def client_work(cfg: Config) -> tuple[float, float]:
    """(per-example gradients per round in millions, clients per round), expected values."""
    data = load_experiment_data(cfg)
    per_client = []
    for client in data.clients:
        batch, steps = cfg.train.local_work(len(client.y_train))
        per_client.append(steps * batch)
    sampled = cfg.federation.clients_per_round(cfg.data.num_clients)
    if cfg.privacy.client.mode != "off":  # Poisson-sampled: q·N clients on average
        sampled = cfg.federation.fraction_train * cfg.data.num_clients
    mean = sum(per_client) / len(per_client)
    return mean * sampled / 1e6, sampled


def run_trial(
    cfg: Config, *, report: Callable[[int, float], None] | None = None,
    prior_ledger: PrivacyLedger | None = None, evaluation: Evaluation | None = None,
) -> TrialOutcome:
    """Run one trial's experiment; never raises for a failed or pruned experiment.

    ``evaluation`` says what the objective reads each round (default: the server-held
    validation set); ``report(round, value)`` gets that value.
    """
    scorer = (evaluation or Evaluation()).for_trial(cfg, source=cfg.name)
    scores: list[float] = []  # the objective, per round
    central: list[float] = []  # exact server-held validation, per round
    tests: list[float] = []

    def on_round(server_round: int, row: dict[str, Any]) -> None:
        if server_round == 0:
            return  # (a non-finite loss has already stopped the run as diverged)
        scores.append(scorer.score(server_round, row))
        central.append(row[SELECTION_METRIC])
        tests.append(row["central_test_accuracy"])
        if report is not None:
            report(server_round, scores[-1])

    try:
        compute_per_round, sampled = client_work(cfg)
        result = run(cfg, callbacks=[on_round], prior_ledger=prior_ledger)
    except SandboxError as exc:  # found by the pre-flight check: nothing ran
        return TrialOutcome.invalid(exc)
    except RunFailed as exc:
        done = len(scores)
        pruned = exc.stop_reason is StopReason.PRUNED
        reason = str(exc.cause) if pruned else f"{type(exc.cause).__name__}: {exc.cause}"
        def last(values: list[float]) -> float:
            return values[-1] if pruned and values else float("nan")

        return TrialOutcome(exc.stop_reason, last(scores), last(tests), last(central),
                            client_compute=compute_per_round * done,
                            client_rounds=sampled * done, rounds_completed=done,
                            run_dir=str(exc.run_dir), reason=reason.splitlines()[0],
                            accuracy_per_round=scores, central_val_per_round=central,
                            eval_ledger=scorer.ledger)
    done = result.rounds[-1]["round"]
    return TrialOutcome(result.stop_reason, scores[-1] if scores else float("nan"),
                        result.final["central_test_accuracy"],
                        result.final[SELECTION_METRIC],
                        math.inf if result.epsilon is None else result.epsilon,
                        compute_per_round * done, sampled * done, done,
                        str(result.run_dir), accuracy_per_round=scores,
                        central_val_per_round=central, eval_ledger=scorer.ledger,
                        reason=result.stopped_early.reason if result.stopped_early else "")


def config_reason(exc: SandboxError) -> str:
    """One line from a ConfigError or DataError: its problems, joined."""
    return "invalid trial config: " + "; ".join(exc.problems)


def trial_ledgers(attrs: dict[str, Any]) -> list[PrivacyLedger]:
    """Every ledger a trial spent (its run's, its noised evaluations'), from its user attrs."""
    ledgers = [trial_ledger(attrs.get("run_dir", "")), trial_ledger(attrs.get("eval_ledger", ""))]
    return [led for led in ledgers if led is not None and led.mechanisms]


def trial_ledger(run_dir: str) -> PrivacyLedger | None:
    """The privacy ledger a trial's run directory holds (finished or stopped early)."""
    if not run_dir:
        return None
    path = Path(run_dir)
    if path.is_file():  # a ledger file (noised evaluations)
        return PrivacyLedger.load(path)
    if (path / "privacy.json").is_file():
        return PrivacyLedger.from_json(json.loads((path / "privacy.json").read_text())["ledger"])
    if (path / "ledger.json").is_file():
        return PrivacyLedger.load(path / "ledger.json")
    return None
