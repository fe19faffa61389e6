"""The report's manifest, ``configs/paper/paper.toml`` (``configs/paper/quick/paper.toml``
for ``--quick``): which config each section runs and its few settings. Config paths are
relative to the manifest's directory; every section table is required."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox.core.config import describe_error
from sandbox.core.errors import ConfigError
from sandbox.core.tomlio import read_toml


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FrameworksSpec(_Spec):
    config: str
    seeds: int = Field(3, ge=1, le=100)
    #: execution modes (sandbox.engine.frameworks.MODES); empty: all of them
    modes: list[str] = Field(default_factory=list)
    #: DP-SGD settings to run: off, on, or both
    dp: list[bool] = Field(default_factory=lambda: [False, True], min_length=1)


class StrategiesSpec(_Spec):
    config: str
    strategies: list[str] = Field(min_length=1)
    strategy_args: dict[str, dict] = Field(default_factory=dict)


class RobustnessSpec(_Spec):
    config: str


class PrivacySpec(_Spec):
    sample: str
    client: str


class SearchSpec(_Spec):
    config: str
    top_k: int = Field(3, ge=1, le=100)
    seeds: int = Field(3, ge=1, le=100)


class TwinSpec(_Spec):
    config: str


class BackendCostSpec(_Spec):
    config: str
    backends: list[Literal["inline", "vectorized", "pool"]] = Field(min_length=1)
    repeats: int = Field(3, ge=2, le=100)


class Manifest(_Spec):
    title: str = "fedsandbox report"
    frameworks: FrameworksSpec
    strategies: StrategiesSpec
    robustness: RobustnessSpec
    privacy: PrivacySpec
    search: SearchSpec
    twin: TwinSpec
    backend_cost: BackendCostSpec


def load_manifest(path: Path) -> Manifest:
    """The validated manifest; a ConfigError naming the file, key and what is allowed."""
    raw = read_toml(path, "paper manifest")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(describe_error(err, Manifest) for err in exc.errors())
        raise ConfigError(f"{path}: invalid paper manifest:\n{lines}") from None
    for name in Manifest.model_fields:
        spec = getattr(manifest, name)
        for key, value in (spec.model_dump().items() if isinstance(spec, _Spec) else ()):
            if key in ("config", "sample", "client") and not (path.parent / value).is_file():
                raise ConfigError(f"{path}: {name}.{key} = {value!r}: no such file next to "
                                  "the manifest (paths are relative to its directory)")
    return manifest
