"""Errors and stop signals shared by every layer.

:class:`SandboxError` and its subclasses are user errors: the CLI prints their message
(exit code 2) instead of a traceback. :class:`RunFailed` wraps whatever stopped a run
that already had a results directory and carries that directory and the
:class:`~sandbox.core.results.StopReason`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from sandbox.core.results import StopReason


class SandboxError(Exception):
    """Base class for user-facing errors (bad config, bad data file, bad combination).

    ``problems`` lists each problem on its own (one per offending key); the message is
    what the CLI prints.
    """

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


class ConfigError(SandboxError):
    """A configuration key has a wrong name, type or value."""


class DataError(SandboxError):
    """A dataset file or partitioning request cannot be satisfied."""


class RunPruned(SandboxError):
    """Raised by a round callback to stop a run early on purpose (e.g. a pruned trial).

    The run directory is kept as ``<run>.pruned`` (not ``.failed``) with its metrics so far.
    """

    def __init__(self, server_round: int, reason: str = "pruned") -> None:
        super().__init__(f"run stopped after round {server_round}: {reason}")
        self.server_round = server_round


class RunDiverged(SandboxError):
    """Raised by a round callback when the global model's loss is no longer finite."""

    def __init__(self, server_round: int, what: str = "centralized loss") -> None:
        super().__init__(f"non-finite {what} at round {server_round}")
        self.server_round = server_round


class ClientsFailed(Exception):
    """Too few clients replied in a round (``federation.min_train_replies``).

    ``failures`` maps partition id to the reason each sampled client failed.
    """

    def __init__(self, server_round: int, valid: int, sampled: int, needed: int,
                 failures: dict[int, str]) -> None:
        first = ", ".join(f"client {pid}: {why}" for pid, why in list(failures.items())[:3])
        if len(failures) > 3:
            first += f", and {len(failures) - 3} more (metrics.json: failures)"
        super().__init__(
            f"round {server_round}: {valid} of {sampled} sampled clients replied, fewer than "
            f"federation.min_train_replies = {needed} ({len(failures)} failed; {first})")
        self.server_round = server_round
        self.failures = failures


class BudgetExhausted(Exception):
    """The next round would take some scope's ε past ``privacy.budget_epsilon``."""

    def __init__(self, server_round: int, scope: str, projected: float, budget: float):
        super().__init__(
            f"round {server_round} would raise ε of {scope} to {projected:.4f} > budget "
            f"{budget:g}; stopped after round {server_round - 1}"
        )
        self.server_round = server_round
        self.scope = scope
        self.projected = projected


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked the run to stop; it stopped at a round boundary.

    A ``KeyboardInterrupt`` so that code which lets Ctrl-C through lets this through too
    (a tuning trial stays "running" in its study and is re-run on ``--resume``).
    ``exit_code`` is the shell convention 128 + signal number (130 SIGINT, 143 SIGTERM).
    """

    def __init__(self, signal_name: str, exit_code: int, server_round: int | None = None):
        where = "" if server_round is None else f" after round {server_round}"
        super().__init__(f"interrupted by {signal_name}{where}")
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.server_round = server_round


class RunFailed(Exception):
    """A run that had a results directory stopped without finishing.

    The original exception is the ``__cause__``; ``run_dir`` is where the partial
    results are (``<run>.failed`` or ``<run>.pruned``), ``stop_reason`` says why.
    """

    def __init__(self, cause: BaseException, *, run_dir: Path, stop_reason: StopReason) -> None:
        super().__init__(f"{type(cause).__name__}: {cause} (partial results kept in {run_dir})")
        self.cause = cause
        self.run_dir = run_dir
        self.stop_reason = stop_reason
