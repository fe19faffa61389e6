"""Study files: ``[study]`` settings, ``[experiment]`` overrides and the ``[space]``.

Every key is documented in ``configs/README.md`` (section "Search studies"). Overrides
(``fedsandbox search --set``) name their table: ``study.n_trials=40``,
``experiment.rounds=6``, ``space.lr.high=0.3``; a key without a table prefix is a
``[study]`` key (what Python callers such as the benchmarks pass).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sandbox.core.config import Config, check_safe_name, describe_error
from sandbox.core.errors import ConfigError
from sandbox.core.tomlio import dict_to_toml, read_toml, set_dotted
from sandbox.engine.preflight import load_config, validate_config
from search.space import SearchSpace

Objective = Literal["accuracy", "epsilon", "client_compute"]
DIRECTIONS = {"accuracy": "maximize", "epsilon": "minimize", "client_compute": "minimize"}
TABLES = ("study", "experiment", "space")
#: [study] keys one backend has no use for: setting them with the other is an error.
BACKEND_ONLY = {
    "optuna": ("sampler", "pruner", "workers", "epsilon_max"),
    "kerastuner": ("oracle", "max_rounds"),
}


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    name: str = "study"
    backend: Literal["optuna", "kerastuner"] = "optuna"
    experiment: str = ""
    n_trials: int = Field(20, ge=1)
    seed: int = Field(0, ge=0)
    sampler: Literal["tpe", "cmaes", "random", "gp", "nsga2"] = "tpe"
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    objectives: list[Objective] = Field(default_factory=lambda: ["accuracy"])
    storage: str = ""
    output_dir: str = "results"
    workers: int = Field(1, ge=1)
    heartbeat_interval: int = Field(30, ge=1)
    epsilon_max: float = Field(0.0, ge=0)
    privacy_budget: float = Field(0.0, ge=0)
    trial_distribution: Literal["fixed", "poisson"] = "fixed"
    client_round_budget: int = Field(0, ge=0)
    oracle: Literal["random", "bayesian", "hyperband"] = "hyperband"
    max_rounds: int = Field(0, ge=0)
    hyperband_factor: int = Field(3, ge=2)
    eval_fraction: float = Field(0.0, ge=0, le=1)
    eval_noise_multiplier: float = Field(0.0, ge=0)
    release: Literal["all", "best_only"] = "all"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_safe_name("study.name", name)

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(
                f"study.objectives must list distinct objectives, got {self.objectives}")
        if self.objectives[0] != "accuracy":
            raise ValueError("study.objectives must start with 'accuracy' (the pruned metric)")
        multi = len(self.objectives) > 1
        if multi and self.pruner != "none":
            raise ValueError("study.pruner must be 'none' for multi-objective studies "
                             "(Optuna prunes single-objective studies only)")
        if multi and self.backend == "kerastuner":
            raise ValueError("study.backend='kerastuner' optimizes one objective; "
                             "use backend='optuna' for multi-objective studies")
        if self.epsilon_max and "epsilon" not in self.objectives:
            raise ValueError("study.epsilon_max constrains ε: add 'epsilon' to study.objectives")
        if self.eval_noise_multiplier and not self.eval_fraction:
            raise ValueError("study.eval_noise_multiplier noises the federated validation "
                             "counts: set study.eval_fraction > 0 (the server-held set "
                             "needs no noise)")
        if self.privacy_budget and self.workers > 1:
            raise ValueError("study.privacy_budget needs workers = 1: concurrent trials "
                             "cannot see each other's spending")
        self._check_backend_keys()
        return self

    def _check_backend_keys(self) -> None:
        other = "kerastuner" if self.backend == "optuna" else "optuna"
        for key in BACKEND_ONLY[other]:
            if key in self.model_fields_set:
                raise ValueError(
                    f"study.{key} is a key of backend '{other}' only; backend '{self.backend}' "
                    "does not use it "
                    f"(remove it or set study.backend = '{other}')")
        if self.backend == "kerastuner" and self.oracle == "hyperband":
            if self.trial_distribution == "poisson":
                raise ValueError("study.trial_distribution = 'poisson' needs a trial count: "
                                 "KerasTuner's hyperband oracle has none; use oracle "
                                 "'random' or 'bayesian'")
            if self.privacy_budget:
                raise ValueError("study.privacy_budget does not work with KerasTuner's "
                                 "hyperband oracle: a promoted trial continues its run from "
                                 "the checkpoint, and a continued run cannot be told what "
                                 "the study spent meanwhile; use oracle 'random' or "
                                 "'bayesian', or backend 'optuna' with pruner 'hyperband'")

    @property
    def directions(self) -> list[str]:
        return [DIRECTIONS[o] for o in self.objectives]

    @property
    def objective_source(self) -> str:
        """Where the objective 'accuracy' comes from, in words (labels and reports)."""
        if not self.eval_fraction:
            return "server-held validation set (central_val_accuracy)"
        noise = (f", DP-noised (sum, count) (σ = {self.eval_noise_multiplier:g}·√2)"
                 if self.eval_noise_multiplier else "")
        return (f"federated validation on {self.eval_fraction:.0%} of clients' local "
                f"validation splits{noise}")


def split_overrides(overrides: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"study.seed": 1, "experiment.rounds": 6, "n_trials": 4}`` by table.

    A key without a table prefix is a ``[study]`` key.
    """
    tables: dict[str, dict[str, Any]] = {name: {} for name in TABLES}
    for key, value in (overrides or {}).items():
        table, dot, rest = key.partition(".")
        if dot and table in TABLES:
            tables[table][rest] = value
        elif dot:
            raise ConfigError(f"--set {key}: search overrides name their table: "
                              "study.KEY, experiment.KEY or space.PARAM.FIELD")
        else:
            tables["study"][key] = value
    return tables


class Study:
    """A parsed study file: settings, base experiment (as a raw dict) and space."""

    def __init__(self, path: str | Path, overrides: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.overrides = dict(overrides or {})
        raw = read_toml(self.path, "study")
        unknown = sorted(set(raw) - set(TABLES))
        if unknown:
            raise ConfigError(f"{self.path}: unknown table(s) {unknown}; allowed: study, "
                              "experiment, space")
        tables = split_overrides(self.overrides)
        self.settings = _parse_settings(dict(raw.get("study", {})) | tables["study"],
                                        self.path)
        base = load_config(self._resolve(self.settings.experiment)
                           if self.settings.experiment else None)
        self.base_raw = base.model_dump(mode="json", exclude_none=True)
        for key, value in [*_flatten(raw.get("experiment", {})), *tables["experiment"].items()]:
            set_dotted(self.base_raw, key, value)
        self.base_raw.setdefault("output", {})["progress"] = False
        self.space = SearchSpace.from_dict(_space_table(raw.get("space", {}), tables["space"]),
                                           source=str(self.path))
        self.base = _validate_experiment(self.base_raw, f"{self.path} [experiment]")
        if "epsilon" in self.settings.objectives and not self.dp_possible:
            raise ConfigError(f"{self.path}: objective 'epsilon' needs DP in the experiment "
                              "(privacy.sample.enabled or privacy.client.mode)")
        if (self.settings.backend, self.settings.oracle) == ("kerastuner", "hyperband") and (
                self.base.backend != "inline" or not self.base.output.checkpoint):
            raise ConfigError(
                f"{self.path}: KerasTuner's hyperband oracle continues promoted trials from "
                "their run's checkpoint: needs experiment.backend = 'inline' and "
                "experiment.output.checkpoint = true (got backend "
                f"'{self.base.backend}', checkpoint {str(self.base.output.checkpoint).lower()})")

    @property
    def dp_possible(self) -> bool:
        """Whether a trial may apply DP (the base experiment does, or the space sets it)."""
        return self.base.privacy.any_dp or any(
            p.key.startswith("privacy.") for p in self.space.params)

    @property
    def objective_deterministic(self) -> bool:
        """Whether a trial's objective is a function of its parameters alone.

        Not with a noised evaluation, nor when trials may draw DP noise (or a client
        sample) from the OS's CSPRNG (``privacy.noise = "secure"``): the same parameters
        then score differently each time (what GP samplers must be told).
        """
        if self.settings.eval_noise_multiplier:
            return False
        return not (self.dp_possible and self.base.privacy.noise == "secure")

    def _resolve(self, name: str) -> Path:
        candidate = Path(name)
        return candidate if candidate.is_absolute() or candidate.exists() else (
            self.path.parent / candidate)

    @property
    def directory(self) -> Path:
        """The study's report: what may be published (``study.release``)."""
        return Path(self.settings.output_dir) / self.settings.name

    @property
    def work_directory(self) -> Path:
        """Storage, trial run directories and evaluation ledgers.

        The report directory itself with ``release = "all"``; with ``"best_only"`` a
        sibling ``<name>.private`` that holds every trial's results and must stay with
        the curator (the random-stopping bound assumes it is never published).
        """
        if self.settings.release == "all":
            return self.directory
        return self.directory.with_name(f"{self.settings.name}.private")

    @property
    def command(self) -> str:
        """The command line that runs this study (file and overrides)."""
        sets = " ".join(f"--set {k if '.' in k else 'study.' + k}={_toml_value(v)}"
                        for k, v in self.overrides.items())
        return f"fedsandbox search {self.path} {sets}".strip()

    def trial_config(self, values: dict[str, Any], *, rounds: int | None = None,
                     name: str = "trial", slot: int | None = None) -> Config:
        raw = self.space.apply(self.base_raw, values)
        raw["name"] = name
        raw.setdefault("output", {}).update(
            {"dir": str(self.work_directory / "trials"), "progress": False,
             "tensorboard": False})
        if rounds is not None:
            raw["rounds"] = int(rounds)
        if self.settings.eval_fraction:  # the client subsample the objective reads
            federation = raw.setdefault("federation", {})
            federation["fraction_evaluate"] = self.settings.eval_fraction
            if slot is not None:  # drawn anew for each trial, as in Kuo et al. (2023)
                federation["evaluate_seed"] = evaluation_seed(self.settings.seed, slot)
        return validate_config(raw, source=f"{self.path} trial {values}")

    def describe(self) -> str:
        """The resolved study, space and base experiment as TOML (``--dry-run``)."""
        settings = self.settings.model_dump(mode="json")
        space = {p.name: {"key": p.key, **{k: v for k, v in p.describe().items()
                                          if v not in (None, False)},
                          **({"when": {k: list(v) for k, v in p.when.items()}}
                             if p.when else {})}
                 for p in self.space.params}
        return "\n".join([
            f"# {self.command}",
            f"# objective 'accuracy': {self.settings.objective_source}",
            f"# trials go to {self.work_directory}/, the report to {self.directory}/ "
            "(nothing was run)", "",
            dict_to_toml({"study": settings}).strip(), "",
            dict_to_toml({"space": space}).strip(), "",
            "# [experiment]: the resolved base config of every trial",
            dict_to_toml({"experiment": self.base.to_dict()}).strip(), ""])


def evaluation_seed(study_seed: int, slot: int) -> int:
    """The seed of a trial's federated-evaluation sample: from (study seed, slot) only."""
    import numpy as np

    state = np.random.SeedSequence([0xE7A1, study_seed, slot]).generate_state(1)[0]
    return int(state & 0x7FFFFFFF)


def _parse_settings(settings: dict[str, Any], path: Path) -> StudyConfig:
    try:
        return StudyConfig.model_validate(settings)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            line = describe_error(error, StudyConfig)
            if not line.startswith("  study."):
                line = line.replace("  ", "  study.", 1)
            line = line.replace("in top level;", "in [study];")
            key = str(error["loc"][0]) if error["loc"] else ""
            if error["type"] == "extra_forbidden" and key in Config.model_fields:
                line += f" (an experiment key? override it with --set experiment.{key}=...)"
            lines.append(line)
        raise ConfigError(f"{path}: invalid [study]\n" + "\n".join(lines),
                          problems=[line.strip() for line in lines]) from None


def _validate_experiment(raw: dict[str, Any], source: str) -> Config:
    """Validate the base experiment; unknown keys are named as ``[experiment]`` keys."""
    try:
        return validate_config(raw, source=source)
    except ConfigError as exc:
        problems = [p.replace("in top level;", "in [experiment];")
                    .replace("in section [", "in [experiment.") for p in exc.problems]
        problems = [p if p.startswith("experiment.") else f"experiment.{p}" for p in problems]
        raise ConfigError(f"{source}: invalid configuration\n  " + "\n  ".join(problems),
                          problems=problems) from None


def _space_table(table: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``[space]`` table with ``--set space.PARAM.FIELD=value`` applied."""
    import copy

    out = copy.deepcopy(table)
    for key, value in overrides.items():
        name, dot, field = key.partition(".")
        if dot and name not in out:
            raise ConfigError(f"--set space.{key}: no parameter '{name}' in [space]; "
                              f"parameters: {', '.join(out) or '(none)'}")
        if dot:
            set_dotted(out[name], field, value)
        else:
            out[name] = value
    return out


def _toml_value(value: Any) -> str:
    text = dict_to_toml({"v": value}).strip().removeprefix("v = ")
    return text.replace(" ", "") if isinstance(value, list) else text


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "strategy_args":
            items += _flatten(value, dotted + ".")
        else:
            items.append((dotted, value))
    return items
