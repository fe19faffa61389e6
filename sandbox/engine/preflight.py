"""Configs checked against the registry, and the pre-flight check before any output exists.

:func:`load_config` / :func:`validate_config` are the schema (:mod:`sandbox.core.config`)
plus what only the layers above the core know: the strategy is registered, takes the
given arguments, and is mean-aggregating when client-level DP wraps it.

:func:`preflight` validates everything that can be validated before a run directory is
created: the config (as above), the data (files, partitions, every client has training
data), the model against the data's shape, and the DP calibration of every client.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import strategies
from sandbox.core import wire
from sandbox.core.config import Config, parse_config
from sandbox.core.data import FederatedData
from sandbox.core.errors import ConfigError, DataError
from sandbox.core.experiment import load_experiment_data
from sandbox.core.models import ModelSpec
from sandbox.core.privacy import SampleDPPlan, client_dp_plan, sample_dp_plans
from sandbox.core.tomlio import parse_overrides, read_toml, set_dotted


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Read a TOML experiment file, apply ``a.b=c`` overrides, validate.

    Parameters
    ----------
    path : str or Path, optional
        TOML file. ``None`` starts from the built-in defaults.
    overrides : list of "key=value" strings or dict of key -> value, optional
        Dotted keys (``data.alpha``); string values are parsed as TOML values
        (``0.1``, ``true``, ``[64, 64]``), falling back to a plain string.

    Raises
    ------
    ConfigError
        With one line per problem, each naming the key and what is allowed.
    """
    raw: dict[str, Any] = {} if path is None else read_toml(path, "config")
    source = "defaults" if path is None else str(path)
    for table, command in (("sweep", "sweep"), ("study", "search")):
        if table in raw:
            raise ConfigError(f"{source} has a [{table}] table: it is a {table} file; "
                              f"run it with `fedsandbox {command} {source}`")
    for key, value in parse_overrides(overrides):
        set_dotted(raw, key, value)
    return validate_config(raw, source=source)


def validate_config(raw: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a nested dict (as read from TOML) into a :class:`Config`."""
    cfg = parse_config(raw, source=source)
    try:
        check_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: invalid configuration\n  {exc}",
                          problems=exc.problems) from None
    return cfg


def check_config(cfg: Config) -> None:
    """The checks that ask the strategy registry."""
    strategies.check_experiment(cfg)  # arguments, and the strategy's own premises
    entry = strategies.info(cfg.federation.strategy)
    mode = cfg.privacy.client.mode
    if mode != "off" and not entry.mean_aggregating:
        raise ConfigError(
            f"privacy.client.mode='{mode}' calibrates noise to a mean of client updates; "
            f"federation.strategy '{entry.name}' is not one; "
            f"allowed: {', '.join(strategies.mean_aggregating())}")
    if cfg.privacy.sample.enabled and not entry.sample_dp:
        allowed = [n for n in strategies.available() if strategies.info(n).sample_dp]
        raise ConfigError(
            f"federation.strategy='{entry.name}' with privacy.sample.enabled is not supported "
            f"(its client update does not fit DP-SGD); allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class Prepared:
    """What the pre-flight check built on the way.

    The run reuses ``data`` and ``spec`` for its results; the server and client sides
    rebuild them (and the DP plans) from the config in whatever process they run in,
    from the same seeded, cached functions.
    """

    data: FederatedData
    spec: ModelSpec
    sample_plans: dict[int, SampleDPPlan]


def preflight(cfg: Config) -> Prepared:
    """Validate everything that can be validated before any output exists.

    Raises
    ------
    ConfigError, DataError
        Naming the key or file and what is allowed.
    """
    check_config(cfg)
    check_output_dir(Path(cfg.output.dir))
    data = load_experiment_data(cfg)
    spec = wire.model_spec_for(cfg)
    _check_model_memory(cfg, spec)
    _check_resources(cfg)
    _check_client_dp(cfg)
    _check_client_sizes(cfg, data)
    return Prepared(data, spec, _sample_plans(cfg, data))


def check_output_dir(path: Path) -> None:
    """``output.dir`` can be created and written (nothing is left behind to find out)."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"output.dir = '{path}': '{existing}' is a file, not a directory")
    try:  # a probe directory, removed at once (permissions alone miss read-only mounts)
        os.rmdir(tempfile.mkdtemp(prefix=".fedsandbox-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"output.dir = '{path}': cannot write in '{existing}' "
                          f"({exc.strerror})") from None


def _check_model_memory(cfg: Config, spec: ModelSpec) -> None:
    """A model too large for memory is a config error, not an out-of-memory crash."""
    needed = spec.training_bytes(batch_size=cfg.train.batch_size,
                                 per_example_grads=cfg.privacy.sample.enabled)
    if needed > cfg.model.max_memory_gb * 2**30:
        raise ConfigError(
            f"model: {spec.num_parameters():,} parameters and "
            f"{spec.activations_per_example():,} activations per example need about "
            f"{needed / 2**30:.1f} GiB per training step (train.batch_size="
            f"{cfg.train.batch_size}), above model.max_memory_gb={cfg.model.max_memory_gb:g}; "
            "use smaller model.hidden / model.channels or raise model.max_memory_gb")


def _check_resources(cfg: Config) -> None:
    """Ray would wait forever for a client slot larger than the machine (a Ray started for
    the run; a cluster's resources, ``ray.address``, are the cluster's); a deployment's CA
    file must exist; the vectorized backend trains torch clients only."""
    if cfg.backend == "ray" and not cfg.ray.address:
        from sandbox.engine.runtime.ray_backend import local_gpus

        cpus, gpus = os.cpu_count() or 1, local_gpus()
        for key, wanted, have, unit in (("num_cpus_per_client", cfg.ray.num_cpus_per_client,
                                         cpus, "CPU"),
                                        ("num_gpus_per_client", cfg.ray.num_gpus_per_client,
                                         gpus, "GPU")):
            if wanted > have:
                raise ConfigError(
                    f"ray.{key}={wanted:g} exceeds the {have} {unit}(s) of this machine: no "
                    f"client could ever be scheduled; allowed: 0 <= x <= {have} (or a "
                    "cluster with ray.address)")
    if cfg.backend == "vectorized" and cfg.framework != "torch":
        raise ConfigError(
            f"backend = 'vectorized' trains torch clients only, not framework = "
            f"'{cfg.framework}'; allowed: framework = 'torch', or backend = 'inline', 'pool' "
            "or 'ray' for Keras and mixed federations")
    certificates = cfg.deployment.root_certificates
    if cfg.backend == "deployment" and certificates and not Path(certificates).is_file():
        raise ConfigError(f"deployment.root_certificates = '{certificates}': no such file "
                          "(the PEM CA certificate of the SuperLink)")


def _check_client_sizes(cfg: Config, data: FederatedData) -> None:
    empty = [cid for cid, c in enumerate(data.clients) if len(c.y_train) == 0]
    if empty:
        raise DataError(
            f"data.partitioner='{cfg.data.partitioner}' left {len(empty)} of "
            f"{len(data.clients)} clients without training data (first: {empty[:5]}); "
            "use fewer data.num_clients or a larger data.min_partition_size"
        )
    if cfg.federation.fraction_evaluate > 0 and sum(len(c.y_val) for c in data.clients) == 0:
        raise DataError(
            "no client has local validation data (data.client_validation_fraction too "
            "small); set data.client_validation_fraction > 0 or "
            "federation.fraction_evaluate = 0"
        )


def _check_client_dp(cfg: Config) -> None:
    """The client-level DP mechanism can be built (its own checks, before any output)."""
    if cfg.privacy.client.mode == "off":
        return
    try:
        client_dp_plan(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _sample_plans(cfg: Config, data: FederatedData) -> dict[int, SampleDPPlan]:
    """Every client's DP-SGD plan; a target ε that no noise can meet is a ConfigError."""
    try:
        return sample_dp_plans(cfg, data)
    except ValueError as exc:
        target = cfg.privacy.sample.target_epsilon
        raise ConfigError(
            f"privacy.sample.target_epsilon={target:g} cannot be met at "
            f"privacy.delta={cfg.privacy.delta:g} with {cfg.rounds} rounds of this "
            f"training schedule ({exc}); raise the target or train fewer steps") from None
