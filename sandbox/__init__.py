"""fedsandbox core: config, data, model specs, runtimes, results.

Importing ``sandbox`` imports no torch, TensorFlow, Keras, Flower or Optuna; the bridge
modules import them when a run needs them.

>>> import sandbox
>>> cfg = sandbox.load_config("configs/quickstart.toml", ["framework=keras", "rounds=5"])
>>> result = sandbox.run(cfg)                    # doctest: +SKIP
>>> result.final["central_accuracy"], result.run_dir  # doctest: +SKIP
"""

from sandbox.api import run
from sandbox.config import Config, load_config, validate_config
from sandbox.errors import ConfigError, DataError, SandboxError
from sandbox.results import RunResult

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "RunResult",
    "SandboxError",
    "load_config",
    "run",
    "validate_config",
]
