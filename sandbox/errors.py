"""Errors the CLI reports as one clear message instead of a traceback."""


class SandboxError(Exception):
    """Base class for user-facing errors (bad config, bad data file, bad combination)."""


class ConfigError(SandboxError):
    """A configuration key has a wrong name, type or value."""


class DataError(SandboxError):
    """A dataset file or partitioning request cannot be satisfied."""
