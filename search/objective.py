"""One tuning trial = one federated experiment, whatever the search backend.

:func:`run_trial` runs the trial's config with :func:`sandbox.engine.api.run`, hands every
round's validation accuracy (server-held validation set, ``central_val_accuracy``) to
``report`` (which may stop the run by raising :class:`~sandbox.core.errors.RunPruned`) and
returns the objective values and costs. The objective "accuracy" is that validation
accuracy: searches, pruning and the best trial never see test data. The test accuracy
(global test set) is recorded beside it as ``test_accuracy``, for the report only.
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
    epsilon: float = float("inf")  # the run's ε (RunResult.epsilon); inf without DP
    client_compute: float = 0.0  # million per-example gradient computations
    client_rounds: float = 0  # expected client-rounds (q·N per round under client DP)
    rounds_completed: int = 0
    run_dir: str = ""
    reason: str = ""
    accuracy_per_round: list[float] = field(default_factory=list)

    @classmethod
    def invalid(cls, exc: Exception) -> TrialOutcome:
        """A trial whose config or data failed validation: nothing ran."""
        return cls(StopReason.FAILED, reason=config_reason(exc))

    @property
    def status(self) -> str:
        """``complete``, ``pruned`` or ``failed``: the trial's state for the search backend."""
        return STATUS.get(self.stop_reason, "failed")

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
    prior_ledger: PrivacyLedger | None = None,
) -> TrialOutcome:
    """Run one trial's experiment; never raises for a failed or pruned experiment."""
    accuracies: list[float] = []  # validation, per round
    tests: list[float] = []

    def on_round(server_round: int, row: dict[str, Any]) -> None:
        if server_round == 0:
            return  # (a non-finite loss has already stopped the run as diverged)
        accuracies.append(row[SELECTION_METRIC])
        tests.append(row["central_test_accuracy"])
        if report is not None:
            report(server_round, row[SELECTION_METRIC])

    try:
        compute_per_round, sampled = client_work(cfg)
        result = run(cfg, callbacks=[on_round], prior_ledger=prior_ledger)
    except SandboxError as exc:  # found by the pre-flight check: nothing ran
        return TrialOutcome.invalid(exc)
    except RunFailed as exc:
        done = len(accuracies)
        pruned = exc.stop_reason is StopReason.PRUNED
        reason = str(exc.cause) if pruned else f"{type(exc.cause).__name__}: {exc.cause}"
        return TrialOutcome(exc.stop_reason,
                            accuracies[-1] if pruned and accuracies else float("nan"),
                            tests[-1] if pruned and tests else float("nan"),
                            client_compute=compute_per_round * done,
                            client_rounds=sampled * done, rounds_completed=done,
                            run_dir=str(exc.run_dir), reason=reason.splitlines()[0],
                            accuracy_per_round=accuracies)
    done = result.rounds[-1]["round"]
    return TrialOutcome(result.stop_reason, result.final[SELECTION_METRIC],
                        result.final["central_test_accuracy"],
                        math.inf if result.epsilon is None else result.epsilon,
                        compute_per_round * done, sampled * done, done,
                        str(result.run_dir), accuracy_per_round=accuracies,
                        reason=result.stopped_early.reason if result.stopped_early else "")


def config_reason(exc: SandboxError) -> str:
    """One line from a ConfigError or DataError: its problems, joined."""
    return "invalid trial config: " + "; ".join(exc.problems)


def trial_ledger(run_dir: str) -> PrivacyLedger | None:
    """The privacy ledger a trial's run directory holds (finished or stopped early)."""
    if not run_dir:
        return None
    path = Path(run_dir)
    if (path / "privacy.json").is_file():
        return PrivacyLedger.from_json(json.loads((path / "privacy.json").read_text())["ledger"])
    if (path / "ledger.json").is_file():
        return PrivacyLedger.load(path / "ledger.json")
    return None
