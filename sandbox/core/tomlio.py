"""TOML files and ``--set key=value`` overrides, as plain nested dicts.

Nothing here knows the config schema; :mod:`sandbox.core.config` validates the dicts.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from sandbox.core.errors import ConfigError


def read_toml(path: str | Path, kind: str) -> dict[str, Any]:
    """Parse a TOML file; a missing file or bad TOML is a ConfigError naming it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{kind} file not found: {file}")
    try:
        return tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None


def parse_overrides(overrides: list[str] | dict[str, Any] | None) -> list[tuple[str, Any]]:
    """``["a.b=1", ...]`` or ``{"a.b": 1}`` -> ``[("a.b", 1), ...]``.

    String values are parsed as TOML values (``0.1``, ``true``, ``[64, 64]``), falling
    back to a plain string.
    """
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. data.alpha=0.1), got '{item}'")
        parsed.append((key.strip(), _parse_value(text.strip())))
    return parsed


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw["a"]["b"] = value`` for ``key = "a.b"``, creating sections on the way."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {key}: '{prefix}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def get_dotted(raw: dict[str, Any], key: str) -> Any:
    """``raw["a"]["b"]`` for ``key = "a.b"``; ``None`` where a part is missing."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def dict_to_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of TOML-compatible values (tables after scalars)."""
    lines: list[str] = []
    _emit_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _emit_table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines.append(f"\n[{'.'.join(path)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {json.dumps(value)}")
    for key, value in tables.items():
        _emit_table(value, [*path, key], lines)
