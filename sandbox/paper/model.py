"""What a report section is: text, tables and figures, plus the numbers behind them.

A section's ``numbers`` are what a rebuild must reproduce exactly (accuracies, ε, audit
bounds: seeded runs); its ``timings`` (wall times, seconds per round) are measured, never
reproducible bit for bit, and are kept apart so that the identity check can leave them out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sandbox.core.stats import MeanCI, mean_ci


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    file: str
    caption: str
    #: a timing figure: its caption also names the CPU and thread settings
    timing: bool = False


@dataclass
class Section:
    name: str
    title: str
    status: str = "done"  # done | skipped | failed
    reason: str = ""
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    #: config file -> hash of the resolved configs it expands to
    config_hashes: dict[str, str] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """section.json (everything), numbers.json and timings.json."""
        payload = asdict(self)
        (directory / "section.json").write_text(_dump(payload))
        (directory / "numbers.json").write_text(_dump(self.numbers))
        (directory / "timings.json").write_text(_dump(self.timings))

    @classmethod
    def load(cls, directory: Path) -> Section:
        data = json.loads((directory / "section.json").read_text())
        data["tables"] = [Table(**t) for t in data["tables"]]
        data["figures"] = [Figure(**f) for f in data["figures"]]
        return cls(**data)


def _dump(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n"


def ci(values: list[float]) -> MeanCI:
    """Mean and 95 % Student-t interval over seeds (raises on a non-finite value)."""
    return mean_ci(values)


def cell(estimate: MeanCI | None, digits: int = 3) -> str:
    """``0.912 ± 0.008`` (the N is a column of its own); ``0.912 (N=1)`` alone."""
    if estimate is None:
        return "–"
    if estimate.half_width is None:
        return f"{estimate.mean:.{digits}f} (N=1, no CI)"
    return f"{estimate.mean:.{digits}f} ± {estimate.half_width:.{digits}f}"


def estimate_dict(estimate: MeanCI) -> dict[str, Any]:
    return {"mean": estimate.mean, "ci95": estimate.half_width, "n": estimate.n}


def seeds_note(counts: set[int]) -> str:
    """What a figure's caption says about its seeds."""
    if counts == {1}:
        return "Single seed: no confidence interval."
    n = "/".join(str(c) for c in sorted(counts))
    return f"Mean ± 95 % CI (Student t) over N = {n} experiment seeds."


@dataclass
class Build:
    """What :func:`sandbox.paper.build.build` made: the sections in report order."""

    out: Path
    sections: list[Section]
    reused: list[str]
    wall_s: float

    @property
    def failed(self) -> list[Section]:
        return [s for s in self.sections if s.status == "failed"]
