"""One tuning trial = one federated experiment, whatever the search backend.

:func:`run_trial` runs the trial's config with :func:`sandbox.engine.api.run` (or continues
a stopped run with :func:`~sandbox.engine.api.resume`), hands every round's objective
value to ``report`` (which may stop the run by raising
:class:`~sandbox.core.errors.RunPruned`) and returns the objective values and costs, read
from the run's round rows (who trained, who evaluated) and its ledger. The
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

from sandbox.core.errors import RunFailed, RunPruned, SandboxError
from sandbox.core.experiment import load_experiment_data
from sandbox.core.privacy import PrivacyLedger
from sandbox.core.privacy.assumptions import epsilon_caveats
from sandbox.core.results import SELECTION_METRIC, StopReason
from sandbox.core.sampling import sample_size
from sandbox.engine.api import resume, run
from sandbox.engine.checkpoint import checkpoint_spend
from search.evaluation import Evaluation

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

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
    client_compute: float = 0.0  # million per-example gradients of the rounds it ran
    client_rounds: float = 0  # clients that trained or evaluated, summed over its rounds
    rounds_completed: int = 0
    run_dir: str = ""
    reason: str = ""
    accuracy_per_round: list[float] = field(default_factory=list)  # what the tuner saw
    central_val_per_round: list[float] = field(default_factory=list)
    eval_ledger: PrivacyLedger | None = None  # noised evaluations' mechanisms, if any
    #: Why ``epsilon`` is not an upper bound (RunResult.epsilon_caveats; empty: it is one).
    epsilon_caveats: list[str] = field(default_factory=list)

    #: Attributes every backend stores on its trials (user attributes).
    RECORDED = ("accuracy", "test_accuracy", "central_val_accuracy", "client_compute",
                "client_rounds", "rounds_completed", "run_dir", "reason",
                "accuracy_per_round", "central_val_per_round", "epsilon_caveats")

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
            attrs["epsilon_upper_bound"] = not self.epsilon_caveats
        if self.budget_stopped:
            attrs["budget_stop"] = True
            attrs["budget_reason"] = self.reason
        if self.status == "failed":
            attrs["fail_reason"] = self.reason or f"no round completed ({self.stop_reason})"
        return attrs

    def value(self, objective: str) -> float:
        return float(getattr(self, objective))


def client_work(cfg: Config) -> dict[int, float]:
    """Per-example gradient computations of one round, in millions, by partition id.

    What a client does in a round follows from its training examples
    (:meth:`~sandbox.core.config.TrainConfig.local_work`); *who* trained in a round is
    read from the run's rows (``train_partitions``), never re-sampled here.
    """
    data = load_experiment_data(cfg)
    work = {}
    for pid, client in enumerate(data.clients):
        batch, steps = cfg.train.local_work(len(client.y_train))
        work[pid] = steps * batch / 1e6
    return work


@dataclass
class _Progress:
    """What a running trial has seen so far, round by round (its callback fills it)."""

    scores: list[float] = field(default_factory=list)  # the objective
    central: list[float] = field(default_factory=list)  # exact server-held validation
    tests: list[float] = field(default_factory=list)
    compute: float = 0.0  # million per-example gradients of the rounds *this* run ran
    client_rounds: int = 0  # clients that trained or evaluated, summed over those rounds


def run_trial(
    cfg: Config, *, report: Callable[[int, float], None] | None = None,
    prior_ledger: PrivacyLedger | None = None, evaluation: Evaluation | None = None,
    stop_after: int | None = None, continue_run: Path | None = None,
    earlier: TrialOutcome | None = None, client_round_limit: float | None = None,
) -> TrialOutcome:
    """Run one trial's experiment; never raises for a failed or pruned experiment.

    ``evaluation`` says what the objective reads each round (default: the server-held
    validation set); ``report(round, value)`` gets that value. ``stop_after = r < rounds``
    stops the run after round ``r`` as pruned, keeping its checkpoint (a Hyperband rung);
    ``continue_run`` is such a stopped run's directory (a copy of it) to continue with
    :func:`sandbox.engine.api.resume` instead of starting afresh, and ``earlier`` the
    outcome of the rounds it continues from. Compute and client-rounds count only the
    rounds this call ran; the run's ledger (and ε) covers the whole run once.
    Client-rounds count every client that trained or evaluated in a round; with
    ``client_round_limit`` the run stops (pruned) after the last round whose successor
    could take it past that limit, so a study's budget is never overrun.
    """
    scorer = (evaluation or Evaluation()).for_trial(cfg, source=cfg.name)
    seen = _Progress()
    if earlier is not None:
        seen.scores += earlier.accuracy_per_round
        seen.central += earlier.central_val_per_round

    def on_round(server_round: int, row: dict[str, Any]) -> None:
        if server_round == 0:
            return  # (a non-finite loss has already stopped the run as diverged)
        seen.scores.append(scorer.score(server_round, row))
        seen.central.append(row[SELECTION_METRIC])
        seen.tests.append(row["central_test_accuracy"])
        seen.compute += sum(work[pid] for pid in row["train_partitions"])
        seen.client_rounds += len(row["train_partitions"]) + len(row["fed_val_partitions"])
        if report is not None:
            report(server_round, seen.scores[-1])
        if (client_round_limit is not None and server_round < cfg.rounds
                and seen.client_rounds + round_cost_bound(cfg) > client_round_limit):
            raise RunPruned(server_round, "client-round budget: another round could pass "
                            f"the study's remaining {client_round_limit:g} client-rounds")
        if stop_after is not None and server_round == stop_after < cfg.rounds:
            raise RunPruned(server_round, f"Hyperband rung: {stop_after} of {cfg.rounds} "
                            "rounds (checkpoint kept to continue)")

    try:
        work = client_work(cfg)
        result = (resume(continue_run, callbacks=[on_round]) if continue_run is not None
                  else run(cfg, callbacks=[on_round], prior_ledger=prior_ledger))
    except SandboxError as exc:  # found by the pre-flight check: nothing ran
        return TrialOutcome.invalid(exc)
    except RunFailed as exc:
        return _stopped_outcome(cfg, exc, seen, scorer.ledger)
    return TrialOutcome(
        result.stop_reason, seen.scores[-1] if seen.scores else float("nan"),
        result.final["central_test_accuracy"], result.final[SELECTION_METRIC],
        math.inf if result.epsilon is None else result.epsilon, seen.compute,
        seen.client_rounds, result.rounds[-1]["round"], str(result.run_dir),
        accuracy_per_round=seen.scores, central_val_per_round=seen.central,
        eval_ledger=scorer.ledger, epsilon_caveats=list(result.epsilon_caveats),
        reason=result.stopped_early.reason if result.stopped_early else "")


def round_cost_bound(cfg: Config, *, every_client_trains: bool = False,
                     evaluate_fraction: float | None = None) -> int:
    """Most client-rounds one round of ``cfg`` can take: training plus evaluation clients.

    Fixed-size samples are exact; a Poisson sample (client-level DP) may hold every client.
    ``every_client_trains`` and ``evaluate_fraction`` bound a round of any trial of a
    study whose space may change ``fraction_train`` or ``fraction_evaluate``.
    """
    clients = cfg.data.num_clients
    train = (clients if every_client_trains or cfg.privacy.client.mode != "off"
             else cfg.federation.clients_per_round(clients))
    fraction = (cfg.federation.fraction_evaluate if evaluate_fraction is None
                else evaluate_fraction)
    return train + (sample_size(clients, fraction) if fraction else 0)


def _stopped_outcome(cfg: Config, exc: RunFailed, seen: _Progress,
                     eval_ledger: PrivacyLedger) -> TrialOutcome:
    """A run that stopped early: pruned (its last values stand) or failed (NaN)."""
    pruned = exc.stop_reason is StopReason.PRUNED
    reason = str(exc.cause) if pruned else f"{type(exc.cause).__name__}: {exc.cause}"

    def last(values: list[float]) -> float:
        return values[-1] if pruned and values else float("nan")

    return TrialOutcome(exc.stop_reason, last(seen.scores), last(seen.tests),
                        last(seen.central), client_compute=seen.compute,
                        client_rounds=seen.client_rounds, rounds_completed=len(seen.scores),
                        run_dir=str(exc.run_dir), reason=reason.splitlines()[0],
                        accuracy_per_round=seen.scores, central_val_per_round=seen.central,
                        eval_ledger=eval_ledger, epsilon_caveats=epsilon_caveats(cfg))


def config_reason(exc: SandboxError) -> str:
    """One line from a ConfigError or DataError: its problems, joined."""
    return "invalid trial config: " + "; ".join(exc.problems)


def trial_ledgers(attrs: dict[str, Any], superseded: Collection[str] = ()
                  ) -> list[PrivacyLedger]:
    """Every ledger a trial spent (its run's, its noised evaluations'), from its user attrs.

    A run in ``superseded`` (:func:`superseded_runs`) was continued by a later trial,
    whose run ledger holds its rounds too: only its evaluations' ledger counts here.
    """
    run_dir = attrs.get("run_dir", "")
    ledgers = [None if run_dir in superseded else trial_ledger(run_dir),
               trial_ledger(attrs.get("eval_ledger", ""))]
    return [led for led in ledgers if led is not None and led.mechanisms]


def superseded_runs(records: Iterable[dict[str, Any]]) -> set[str]:
    """Run directories that a later trial continued (``continued_run``) from a checkpoint.

    The continuing run restored the stopped run's ledger, so counting both would charge
    the stopped run's rounds twice.
    """
    return {a["continued_run"] for a in records if a.get("continued_run") and a.get("run_dir")}


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
    spent = checkpoint_spend(path)  # a killed worker's run: its last checkpoint
    return spent[1] if spent else None
