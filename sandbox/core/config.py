"""Experiment configuration schema: a nested dict (from TOML) -> validated, typed :class:`Config`.

Every key is documented in ``configs/README.md``. This module checks what the schema
alone can check (types, ranges, combinations of keys). What depends on other layers,
such as whether a strategy is registered and takes the given arguments, is checked by
the engine's pre-flight (:mod:`sandbox.engine.preflight`) before any output exists.
Reading TOML files and ``--set`` overrides: :mod:`sandbox.core.tomlio`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sandbox.core.errors import ConfigError
from sandbox.core.sampling import sample_size
from sandbox.core.tomlio import dict_to_toml

Framework = Literal["torch", "keras", "mixed"]
Backend = Literal["inline", "ray", "vectorized", "pool", "deployment"]
DatasetName = Literal["digits", "mnist1d", "synthetic", "npz", "csv"]
PartitionerName = Literal["iid", "dirichlet", "shards", "quantity_skew", "natural"]
ArchName = Literal["mlp", "cnn"]
Activation = Literal["relu", "tanh", "sigmoid", "elu"]
OptimizerName = Literal["sgd", "adam"]
TorchMode = Literal["eager", "compile"]
KerasMode = Literal["graph", "eager", "xla"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataConfig(_Section):
    dataset: DatasetName = "digits"
    num_clients: int = Field(10, ge=1, le=100_000)
    partitioner: PartitionerName = "dirichlet"
    alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)
    quantity_beta: float = Field(0.5, gt=0)
    min_partition_size: int = Field(10, ge=0)
    global_test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    client_validation_fraction: float = Field(0.2, ge=0, lt=1)
    num_samples: int = Field(4000, ge=10)
    synthetic_alpha: float = Field(1.0, ge=0)
    synthetic_beta: float = Field(1.0, ge=0)
    synthetic_dim: int = Field(60, ge=1)
    num_classes: int = Field(10, ge=2)
    path: str = ""
    label_column: str = "label"

    @model_validator(mode="after")
    def _check_combinations(self) -> DataConfig:
        if self.dataset in ("npz", "csv") and not self.path:
            raise ValueError(f"data.path is required for dataset '{self.dataset}'")
        if self.partitioner == "natural" and self.dataset != "synthetic":
            raise ValueError(
                "data.partitioner='natural' needs data.dataset='synthetic' "
                "(the only dataset with a natural client split)"
            )
        return self


class ModelConfig(_Section):
    arch: ArchName = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64])
    channels: list[int] = Field(default_factory=lambda: [16, 32])
    kernel_size: int = Field(3, ge=1, le=15)
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    max_memory_gb: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _check_sizes(self) -> ModelConfig:
        for key in ("hidden", "channels"):
            if any(width < 1 for width in getattr(self, key)):
                raise ValueError(f"model.{key} entries must be >= 1, got {getattr(self, key)}")
        if self.arch == "cnn" and not self.channels:
            raise ValueError("model.channels must list at least one conv layer for arch 'cnn'")
        return self


class TrainConfig(_Section):
    optimizer: OptimizerName = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.0, ge=0, lt=1)
    batch_size: int = Field(32, ge=1)
    local_epochs: int | None = Field(None, ge=1)
    local_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.local_epochs is not None and self.local_steps is not None:
            raise ValueError("set only one of train.local_epochs and train.local_steps")
        if self.momentum and self.optimizer != "sgd":
            raise ValueError("train.momentum applies to optimizer 'sgd' only")
        return self

    @property
    def epochs_or_default(self) -> int:
        return self.local_epochs if self.local_epochs is not None else 1

    def local_work(self, num_examples: int) -> tuple[int, int]:
        """(batch size, optimizer steps) of one round for a client with ``num_examples``.

        ``local_steps`` gives the steps directly; ``local_epochs`` gives
        ``epochs * ceil(n / batch)``. The batch is capped at the client's sample count.
        """
        batch = min(self.batch_size, num_examples)
        if self.local_steps is not None:
            return batch, self.local_steps
        return batch, self.epochs_or_default * math.ceil(num_examples / batch)


class FederationConfig(_Section):
    strategy: str = "fedavg"
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_train_replies: int = Field(1, ge=1)
    #: seed of the evaluation client sample (default: the run's seed); searches give each
    #: trial its own, so federated validation is a fresh subsample per trial
    evaluate_seed: int | None = Field(None, ge=0, lt=2**31)
    strategy_args: dict[str, float | int | bool | str] = Field(default_factory=dict)

    def clients_per_round(self, num_clients: int) -> int:
        """How many clients train each round (``fraction_train``; see core.sampling)."""
        return sample_size(num_clients, self.fraction_train)


ClientDPMode = Literal["off", "server_fixed", "client_fixed", "server_adaptive", "client_adaptive"]
AccountantName = Literal["rdp", "prv"]
NoiseSource = Literal["secure", "seeded"]


class SampleDPConfig(_Section):
    """Sample-level DP-SGD inside every client (Opacus in torch, our own step in Keras)."""

    enabled: bool = False
    noise_multiplier: float = Field(1.0, ge=0)
    target_epsilon: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    poisson: bool = True


class ClientDPConfig(_Section):
    """Client-level DP (DP-FedAvg, fixed or adaptive clipping) around the strategy."""

    mode: ClientDPMode = "off"
    noise_multiplier: float = Field(1.0, gt=0)
    clipping_norm: float = Field(1.0, gt=0)
    target_clipped_quantile: float = Field(0.5, ge=0, le=1)
    clip_norm_lr: float = Field(0.2, gt=0)
    clipped_count_stddev: float = Field(0.0, ge=0)


class AuditConfig(_Section):
    """Empirical privacy audits run on the final global model."""

    membership: bool = False
    max_examples: int = Field(2000, ge=10)
    canaries: int = Field(0, ge=0)
    canary_client: int = Field(0, ge=0)
    canary_repeats: int = Field(1, ge=1)
    guesses: int = Field(0, ge=0)
    confidence: float = Field(0.95, gt=0, lt=1)

    @model_validator(mode="after")
    def _check_guesses(self) -> AuditConfig:
        if self.canaries and 2 * self.guesses > self.canaries:
            raise ValueError(
                f"privacy.audit.guesses={self.guesses} guesses per side need at least "
                f"{2 * self.guesses} canaries; privacy.audit.canaries={self.canaries}"
            )
        return self


class PrivacyConfig(_Section):
    delta: float = Field(1e-5, gt=0, lt=1)
    accountant: AccountantName = "rdp"
    budget_epsilon: float = Field(0.0, ge=0)
    #: "secure": DP randomness (noise, DP-SGD batches, the client sample under client-level
    #: DP, the search's evaluation noise) fresh from os.urandom in every run: ε is an upper
    #: bound. "seeded": drawn from the run seed, reproducible bit for bit but NOT PRIVATE
    #: (anyone who knows the seed can subtract the noise, and runs of one seed share it):
    #: every ε is then flagged as not an upper bound.
    noise: NoiseSource = "secure"
    sample: SampleDPConfig = Field(default_factory=SampleDPConfig)
    client: ClientDPConfig = Field(default_factory=ClientDPConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _check_dp(self) -> PrivacyConfig:
        sample = self.sample
        if sample.enabled and sample.target_epsilon == 0 and sample.noise_multiplier == 0:
            raise ValueError(
                "privacy.sample: set noise_multiplier > 0 or target_epsilon > 0 "
                "(noise_multiplier = 0 gives no privacy)"
            )
        if self.budget_epsilon and not (sample.enabled or self.client.mode != "off"):
            raise ValueError(
                "privacy.budget_epsilon needs a DP mechanism: set privacy.sample.enabled = true "
                "or privacy.client.mode to one of server_fixed, client_fixed, "
                "server_adaptive, client_adaptive"
            )
        return self

    @property
    def any_dp(self) -> bool:
        return self.sample.enabled or self.client.mode != "off"

    @property
    def secure_rng(self) -> bool:
        """DP randomness from the OS's CSPRNG (``noise = "secure"``), not from the seed."""
        return self.noise == "secure"


class RayConfig(_Section):
    """Flower's Ray simulation (``backend = "ray"``)."""

    num_cpus_per_client: float = Field(1.0, gt=0)
    num_gpus_per_client: float = Field(0.0, ge=0)
    #: an existing Ray cluster to connect to (``ray://host:port`` or ``host:port`` of a
    #: head started with ``ray start --head``); empty: start a local Ray for this run
    address: str = ""

    @field_validator("address")
    @classmethod
    def _host_port(cls, address: str) -> str:
        if address and not re.fullmatch(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d{1,5}", address):
            raise ValueError(f"ray.address={address!r} is not host:port or ray://host:port "
                             "(empty: a local Ray for the run)")
        return address


class DeploymentConfig(_Section):
    """Flower's Deployment Engine (``backend = "deployment"``): SuperLink + SuperNodes."""

    #: SuperLink Control API address of an existing deployment; empty: the run starts a
    #: local SuperLink and one SuperNode per partition on 127.0.0.1 and stops them after
    superlink: str = ""
    #: TLS with a CA and certificates generated for the run (local deployments), or the
    #: CA certificate file given in ``root_certificates`` (existing ones)
    tls: bool = False
    root_certificates: str = ""

    @model_validator(mode="after")
    def _check_certificates(self) -> DeploymentConfig:
        if self.root_certificates and not self.superlink:
            raise ValueError(
                "deployment.root_certificates is for an existing deployment "
                "(deployment.superlink); a local one makes its own CA: set "
                "deployment.tls = true instead")
        return self


class MixedConfig(_Section):
    """``framework = "mixed"``: which partitions train in Keras (the rest in torch)."""

    #: share of partitions that train in Keras, assigned by a generator seeded from ``seed``
    keras_fraction: float = Field(0.5, ge=0, le=1)
    #: explicit Keras partition ids (overrides ``keras_fraction`` when non-empty)
    keras_partitions: list[int] = Field(default_factory=list)


StepsDistributionName = Literal["lognormal", "uniform"]


class StepsDistribution(_Section):
    """Per-client local steps drawn from a seeded distribution (rounded, clipped)."""

    dist: StepsDistributionName = "lognormal"
    #: lognormal: the median steps; uniform: ignored
    median: float = Field(10.0, gt=0)
    #: lognormal: sigma of log(steps)
    sigma: float = Field(1.0, ge=0)
    #: bounds of the drawn steps (uniform draws integers in [min, max])
    min: int = Field(1, ge=1)
    max: int = Field(100, ge=1)
    #: draw again every round (stragglers vary) instead of once per client
    per_round: bool = False

    @model_validator(mode="after")
    def _check_bounds(self) -> StepsDistribution:
        if self.min > self.max:
            raise ValueError(f"heterogeneity.local_steps: min = {self.min} > max = {self.max}")
        return self


class HeterogeneityConfig(_Section):
    """System heterogeneity: clients do different amounts of local work per round."""

    #: per-client optimizer steps per round: a distribution table, or one entry per
    #: partition; replaces ``train.local_steps`` / ``train.local_epochs``. None: off
    local_steps: list[int] | StepsDistribution | None = None

    @field_validator("local_steps", mode="before")
    @classmethod
    def _list_or_table(cls, value):
        """One error message for the form given (a union reports both forms' errors)."""
        if isinstance(value, dict):
            try:
                return StepsDistribution.model_validate(value)
            except ValidationError as exc:
                raise ValueError("; ".join(_steps_table_error(e) for e in exc.errors())
                                 ) from None
        if value is not None and not isinstance(value, list | StepsDistribution):
            raise ValueError(
                f"heterogeneity.local_steps = {value!r}: allowed: a list of steps per "
                "partition, or a table {dist = 'lognormal' | 'uniform', median, sigma, "
                "min, max, per_round}")
        return value

    @field_validator("local_steps")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, list) and any(steps < 1 for steps in value):
            raise ValueError(f"heterogeneity.local_steps entries must be >= 1, got {value}")
        return value


def _steps_table_error(err: dict[str, Any]) -> str:
    key = ".".join(["heterogeneity.local_steps", *(str(part) for part in err["loc"])])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key; allowed keys: {', '.join(StepsDistribution.model_fields)}"
    if err["type"] == "value_error":
        return err["msg"].removeprefix("Value error, ")
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


AttackKind = Literal["label_flip", "sign_flip", "gaussian", "scale"]


class AttackConfig(_Section):
    """Malicious clients (seeded), to measure robust aggregation."""

    #: share of partitions that are malicious, assigned by a generator seeded from ``seed``
    fraction: float = Field(0.0, ge=0, lt=1)
    #: explicit malicious partition ids (overrides ``fraction`` when non-empty)
    partitions: list[int] = Field(default_factory=list)
    kind: AttackKind = "sign_flip"
    #: sign_flip / scale: the update (w_local - w_global) is multiplied by -scale / scale
    scale: float = Field(10.0, gt=0)
    #: gaussian: the reply is w_global + N(0, noise_std^2) per weight
    noise_std: float = Field(1.0, gt=0)

    @property
    def any(self) -> bool:
        return bool(self.fraction or self.partitions)


class RuntimeConfig(_Section):
    """Limits and thread counts every backend applies to client and server work."""

    client_timeout_s: float = Field(3600.0, gt=0)
    #: torch intra-op threads and TensorFlow intra-op threads of every client's training
    #: and evaluation, on every backend (float reductions depend on the thread count).
    threads_per_client: int = Field(1, ge=1, le=256)
    #: the same for the server's centralized evaluation.
    server_threads: int = Field(1, ge=1, le=256)
    #: ``backend = "pool"``: worker processes (0: one per CPU core)
    workers: int = Field(0, ge=0, le=256)
    #: how torch clients run their training steps: "eager" (plain PyTorch) or "compile"
    #: (``torch.compile``, TorchInductor)
    torch_mode: TorchMode = "eager"
    #: how Keras clients run their training steps: "graph" (``tf.function``), "eager"
    #: (plain TensorFlow ops) or "xla" (``tf.function(jit_compile=True)``)
    keras_mode: KerasMode = "graph"


class FaultsConfig(_Section):
    """Injected client failures (seeded), to test and measure robustness."""

    client_failure_rate: float = Field(0.0, ge=0, lt=1)
    fail_partitions: list[int] = Field(default_factory=list)
    slow_partitions: list[int] = Field(default_factory=list)
    slow_seconds: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check_slow(self) -> FaultsConfig:
        if self.slow_partitions and not self.slow_seconds:
            raise ValueError("faults.slow_partitions needs faults.slow_seconds > 0")
        return self

    @property
    def any(self) -> bool:
        return bool(self.client_failure_rate or self.fail_partitions or self.slow_partitions)


class OutputConfig(_Section):
    dir: str = "results"
    checkpoint: bool = True
    tensorboard: bool = True
    plot: bool = True
    save_weights: bool = True
    progress: bool = True


class Config(_Section):
    """One federated experiment. Defaults reproduce ``configs/quickstart.toml``."""

    name: str = "experiment"
    seed: int = Field(0, ge=0, lt=2**31)
    framework: Framework = "torch"
    backend: Backend = "inline"
    rounds: int = Field(20, ge=1, le=100_000)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    mixed: MixedConfig = Field(default_factory=MixedConfig)
    heterogeneity: HeterogeneityConfig = Field(default_factory=HeterogeneityConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_safe_name("name", name)

    @model_validator(mode="after")
    def _check_cross_sections(self) -> Config:
        audit = self.privacy.audit
        if audit.canaries and audit.canary_client >= self.data.num_clients:
            raise ValueError(
                f"privacy.audit.canary_client={audit.canary_client} is not a client; "
                f"allowed: 0..{self.data.num_clients - 1} (data.num_clients)"
            )
        if self.privacy.client.mode != "off":
            _check_client_dp(self)
        _check_partition_lists(self)
        threads = self.runtime
        if (self.framework == "keras" and self.backend == "inline"
                and threads.threads_per_client != threads.server_threads):
            # TensorFlow sizes its thread pools once per process.
            raise ValueError(
                f"runtime.server_threads = {threads.server_threads} differs from "
                f"runtime.threads_per_client = {threads.threads_per_client}: with framework "
                "= 'keras' and backend = 'inline', clients and server share one TensorFlow "
                "thread pool; set the two equal, or use backend = 'ray'")
        _check_execution_modes(self)
        if self.heterogeneity.local_steps is not None and self.privacy.sample.enabled:
            # The DP-SGD plan (steps, sampling rate) that the server's ledger accounts is
            # one per client for the whole run.
            raise ValueError(
                "heterogeneity.local_steps cannot be used with privacy.sample.enabled = true "
                "(DP-SGD's steps per round come from its privacy plan); allowed: "
                "heterogeneity.local_steps unset, or sample-level DP off")
        if self.privacy.sample.enabled and self.model.dropout:
            raise ValueError(
                "privacy.sample.enabled needs model.dropout = 0 "
                "(per-example gradients are taken without dropout masks)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def config_hash(self) -> str:
        """Stable hash of every setting that changes the computation (output is excluded)."""
        payload = {k: v for k, v in self.to_dict().items() if k not in ("output", "name")}
        # Keys added after runs were recorded leave hashes as they were at their defaults.
        for key, default in (("torch_mode", "eager"), ("keras_mode", "graph")):
            if payload["runtime"][key] == default:
                del payload["runtime"][key]
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def data_fingerprint(self) -> str:
        """Hash of what defines the clients' data (ledgers compose only on equal ones)."""
        payload = {"data": self.data.model_dump(mode="json"), "seed": self.seed,
                   "canaries": self.privacy.audit.model_dump(mode="json")
                   if self.privacy.audit.canaries else None}
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_toml(self) -> str:
        return dict_to_toml(self.to_dict())


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_safe_name(key: str, name: str) -> str:
    """``name`` if it is safe as a directory name; else a ValueError naming ``key``.

    Run, sweep and study names become directory names under ``output.dir``: letters,
    digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most 64
    characters, no ``..`` (so no name can leave the results directory).
    """
    if not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{key}={name!r} is not a safe directory name: use letters, digits, '.', '_' "
            "and '-' (start with a letter or digit, at most 64 characters, no '..')")
    return name


def _check_partition_lists(cfg: Config) -> None:
    """Every key that lists partition ids names existing ones (and the right count)."""
    lists = {"faults.fail_partitions": cfg.faults.fail_partitions,
             "faults.slow_partitions": cfg.faults.slow_partitions,
             "mixed.keras_partitions": cfg.mixed.keras_partitions,
             "attack.partitions": cfg.attack.partitions}
    for key, ids in lists.items():
        bad = [p for p in ids if not 0 <= p < cfg.data.num_clients]
        if bad:
            raise ValueError(f"{key}: {bad} are not clients; allowed: "
                             f"0..{cfg.data.num_clients - 1} (data.num_clients)")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{key}: {ids} lists a partition twice")
    steps = cfg.heterogeneity.local_steps
    if isinstance(steps, list) and len(steps) != cfg.data.num_clients:
        raise ValueError(
            f"heterogeneity.local_steps lists {len(steps)} entries; allowed: one per "
            f"partition ({cfg.data.num_clients}, data.num_clients) or a distribution table")
    mixed_keys = cfg.mixed.keras_partitions or cfg.mixed.keras_fraction != 0.5
    if cfg.framework != "mixed" and mixed_keys:
        raise ValueError(f"[mixed] needs framework = 'mixed' (got '{cfg.framework}')")


def _check_execution_modes(cfg: Config) -> None:
    """A mode key is set only for a framework the run's clients use."""
    runtime = cfg.runtime
    if runtime.torch_mode != "eager" and cfg.framework == "keras":
        raise ValueError(
            f"runtime.torch_mode = '{runtime.torch_mode}' needs torch clients; framework = "
            "'keras' has none: set runtime.keras_mode instead, or framework = 'torch' or "
            "'mixed'")
    if runtime.torch_mode != "eager" and cfg.backend == "vectorized":
        raise ValueError(
            f"runtime.torch_mode = '{runtime.torch_mode}' cannot be used with backend = "
            "'vectorized' (it trains a round's clients as one batched computation of its "
            "own); allowed: torch_mode = 'eager', or backend 'inline', 'pool', 'ray' or "
            "'deployment'")
    if runtime.keras_mode != "graph" and cfg.framework == "torch":
        raise ValueError(
            f"runtime.keras_mode = '{runtime.keras_mode}' needs Keras clients; framework = "
            "'torch' has none: set runtime.torch_mode instead, or framework = 'keras' or "
            "'mixed'")


def _check_client_dp(cfg: Config) -> None:
    client = cfg.privacy.client
    if cfg.federation.min_train_replies != 1:
        # Stopping for too few replies would release whether clients took part; under
        # client-level DP an empty round releases noise only and the run goes on.
        raise ValueError(
            f"federation.min_train_replies={cfg.federation.min_train_replies} cannot be "
            "used with client-level DP (privacy.client.mode): stopping a run for too few "
            "replies reveals participation; allowed: 1 (the default)")
    if client.mode.endswith("adaptive"):
        # Clients are Poisson-sampled under client-level DP: qN is the expected count.
        expected = cfg.federation.fraction_train * cfg.data.num_clients
        stddev = client.clipped_count_stddev or expected / 20
        default = ("" if client.clipped_count_stddev else
                   " (default: fraction_train × num_clients / 20)")
        if client.noise_multiplier >= 2 * stddev:
            raise ValueError(
                f"privacy.client.noise_multiplier={client.noise_multiplier} needs "
                f"privacy.client.clipped_count_stddev > {client.noise_multiplier / 2:g} "
                f"for adaptive clipping (Andrew et al. 2021); it is {stddev:g}{default}"
            )


def parse_config(raw: dict[str, Any], *, source: str = "config") -> Config:
    """Validate a nested dict (as read from TOML) against the schema.

    Raises
    ------
    ConfigError
        With one line per problem, each naming the key and what is allowed.
    """
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [describe_error(err) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines),
                          problems=[line.strip() for line in lines]) from None


#: Keys that were renamed: old dotted key -> (new key, why).
RENAMED_KEYS = {
    "data.test_fraction": ("data.client_validation_fraction",
                           "each client's held-out share is its validation split"),
    "privacy.secure_rng": ("privacy.noise",
                           "'secure' is now the default; 'seeded' is reproducible but "
                           "not private"),
}


def describe_error(err: dict[str, Any], root: type[BaseModel] | None = None) -> str:
    """One line for a pydantic error: the key, what was given, what is allowed."""
    loc = ".".join(str(part) for part in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden" and loc in RENAMED_KEYS and root in (None, Config):
        new, why = RENAMED_KEYS[loc]
        return f"  {loc}: renamed to {new} ({why})"
    if kind == "extra_forbidden":
        section, _, name = loc.rpartition(".")
        allowed = ", ".join(allowed_keys(root or Config, section))
        where = f"section [{section}]" if section else "top level"
        return f"  {loc}: unknown key '{name}' in {where}; allowed keys: {allowed}"
    if kind == "value_error":
        return f"  {err['msg'].removeprefix('Value error, ')}"
    given = err.get("input")
    return f"  {loc or '(top level)'}: {err['msg']} (got {given!r})"


def allowed_keys(root: type[BaseModel], section: str) -> list[str]:
    """The keys of ``section`` (dotted, "" for the top level) of the model ``root``."""
    model = root
    for part in filter(None, section.split(".")):
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
