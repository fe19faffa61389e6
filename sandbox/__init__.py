"""fedsandbox: federated learning + AutoML research sandbox.

Layers, bottom to top (each imports only layers below it; ``pyproject.toml`` holds the
import-linter contract): ``sandbox.core`` (config schema, data, model specs, privacy
maths, wire protocol, results format) -> ``clients`` | ``strategies`` -> ``sandbox.engine``
(runtimes, the ``run`` API, sweeps, recorder, plots) -> ``search`` -> ``sandbox.cli``.

This package re-exports the public API lazily: importing ``sandbox`` imports no torch,
TensorFlow, Keras, Flower or Optuna.

>>> import sandbox
>>> cfg = sandbox.load_config("configs/quickstart.toml", ["framework=keras", "rounds=5"])
>>> result = sandbox.run(cfg)                    # doctest: +SKIP
>>> result.final["central_test_accuracy"], result.epsilon, result.stop_reason  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> module that defines it
_EXPORTS = {
    "Config": "sandbox.core.config",
    "ConfigError": "sandbox.core.errors",
    "DataError": "sandbox.core.errors",
    "RunDiverged": "sandbox.core.errors",
    "RunFailed": "sandbox.core.errors",
    "RunPruned": "sandbox.core.errors",
    "SandboxError": "sandbox.core.errors",
    "RunResult": "sandbox.core.results",
    "StopReason": "sandbox.core.results",
    "load_config": "sandbox.engine.preflight",
    "preflight": "sandbox.engine.preflight",
    "validate_config": "sandbox.engine.preflight",
    "run": "sandbox.engine.api",
    "run_sweep": "sandbox.engine.sweep",
}

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.errors import (
        ConfigError,
        DataError,
        RunDiverged,
        RunFailed,
        RunPruned,
        SandboxError,
    )
    from sandbox.core.results import RunResult, StopReason
    from sandbox.engine.api import run
    from sandbox.engine.preflight import load_config, preflight, validate_config
    from sandbox.engine.sweep import run_sweep


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sandbox' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Config", "ConfigError", "DataError", "RunDiverged", "RunFailed", "RunPruned", "RunResult",
    "SandboxError", "StopReason", "load_config", "preflight", "run", "run_sweep",
    "validate_config",
]
