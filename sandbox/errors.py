"""Errors the CLI reports as one clear message instead of a traceback."""


class SandboxError(Exception):
    """Base class for user-facing errors (bad config, bad data file, bad combination)."""


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
