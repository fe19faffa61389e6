"""One tuning trial = one federated experiment, whatever the search backend.

:func:`run_trial` runs the trial's config with :func:`sandbox.run`, hands every round's
centralized accuracy to ``report`` (which may stop the run by raising
:class:`~sandbox.errors.RunPruned`) and returns the objective values and costs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.errors import RunPruned, SandboxError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.config import Config
    from sandbox.privacy import PrivacyLedger


class TrialFailed(SandboxError):
    """The experiment of a trial failed (NaN loss, invalid architecture, ...)."""


@dataclass
class TrialOutcome:
    status: str  # "complete" | "pruned" | "failed"
    accuracy: float = float("nan")
    epsilon: float = float("inf")
    client_compute: float = 0.0  # million per-example gradient computations
    client_rounds: int = 0
    rounds_completed: int = 0
    run_dir: str = ""
    reason: str = ""
    accuracy_per_round: list[float] = field(default_factory=list)

    def value(self, objective: str) -> float:
        return float(getattr(self, objective))


def client_work(cfg: Config) -> tuple[float, int]:
    """(per-example gradients per round in millions, clients per round), expected values."""
    from sandbox.data import load_experiment_data
    from sandbox.privacy.plan import clients_per_round

    data = load_experiment_data(cfg)
    per_client = []
    for client in data.clients:
        batch, steps = cfg.train.local_work(len(client.y_train))
        per_client.append(steps * batch)
    sampled = clients_per_round(cfg.data.num_clients, cfg.federation.fraction_train)
    mean = sum(per_client) / len(per_client)
    return mean * sampled / 1e6, sampled


def run_trial(
    cfg: Config, *, report: Callable[[int, float], None] | None = None,
    prior_ledger: PrivacyLedger | None = None,
) -> TrialOutcome:
    """Run one trial's experiment; never raises for a failed or pruned experiment."""
    import sandbox

    accuracies: list[float] = []

    def on_round(server_round: int, row: dict[str, Any]) -> None:
        if server_round == 0:
            return
        if not math.isfinite(row["central_loss"]):
            raise TrialFailed(f"non-finite centralized loss at round {server_round}")
        accuracies.append(row["central_accuracy"])
        if report is not None:
            report(server_round, row["central_accuracy"])

    compute_per_round, sampled = client_work(cfg)
    try:
        result = sandbox.run(cfg, callbacks=[on_round], prior_ledger=prior_ledger)
    except RunPruned as exc:
        done = len(accuracies)
        return TrialOutcome("pruned", accuracies[-1] if accuracies else float("nan"),
                            client_compute=compute_per_round * done,
                            client_rounds=sampled * done, rounds_completed=done,
                            run_dir=_run_dir_of(exc), reason=str(exc),
                            accuracy_per_round=accuracies)
    except Exception as exc:  # noqa: BLE001 - a failed trial is data for the study
        done = len(accuracies)
        return TrialOutcome("failed", client_compute=compute_per_round * done,
                            client_rounds=sampled * done, rounds_completed=done,
                            run_dir=_run_dir_of(exc),
                            reason=f"{type(exc).__name__}: {exc}".splitlines()[0],
                            accuracy_per_round=accuracies)
    done = result.rounds[-1]["round"]
    scopes = result.privacy.get("scopes", {})
    eps = max((v[cfg.privacy.accountant] for v in scopes.values()), default=float("inf"))
    return TrialOutcome("complete", result.final["central_accuracy"], eps,
                        compute_per_round * done, sampled * done, done,
                        str(result.run_dir), accuracy_per_round=accuracies,
                        reason=(result.stopped_early or {}).get("reason", ""))


def config_reason(exc: Exception) -> str:
    """One-line reason from a multi-line ConfigError (the offending keys)."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
    return "invalid trial config: " + ("; ".join(lines) or str(exc))


def _run_dir_of(exc: BaseException) -> str:
    return str(getattr(exc, "run_dir", "") or "")


def trial_ledger(run_dir: str) -> PrivacyLedger | None:
    """The privacy ledger a trial's run directory holds (finished or stopped early)."""
    from sandbox.privacy import PrivacyLedger

    if not run_dir:
        return None
    path = Path(run_dir)
    if (path / "privacy.json").is_file():
        return PrivacyLedger.from_json(json.loads((path / "privacy.json").read_text())["ledger"])
    if (path / "ledger.json").is_file():
        return PrivacyLedger.load(path / "ledger.json")
    return None
