"""``fedsandbox ls``: the runs, sweeps and studies in a results directory, with their state.

A directory's state comes from its name suffix (see :mod:`sandbox.engine.rundir`) and,
where present, its ``run.json``: ``finished``, ``budget`` (stopped by the privacy
budget), ``failed``, ``diverged``, ``pruned``, ``interrupted``, or ``incomplete`` for a
``.partial`` directory (still running, or killed outright; its rounds are those of its
last checkpoint, from which ``fedsandbox run --resume DIR`` continues it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.core.errors import SandboxError
from sandbox.engine.checkpoint import checkpoint_round

#: Marks an ε that is not an upper bound (seeded noise, non-Poisson batches).
NOT_A_BOUND = "*"
_SUFFIX_STATE = {".failed": "failed", ".pruned": "pruned", ".interrupted": "interrupted",
                 ".partial": "incomplete"}


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # run, sweep, study, other
    state: str
    rounds: int | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    epsilon: float | None = None
    epsilon_upper_bound: bool = True


def list_results(directory: str | Path) -> list[Entry]:
    """One :class:`Entry` per subdirectory of ``directory``, sorted by name."""
    root = Path(directory)
    if not root.is_dir():
        raise SandboxError(f"ls: {root} is not a directory (give the output.dir of your runs)")
    # <study>.private/ holds a best-only study's trials: part of <study>, not shown apart
    return [_entry(path) for path in sorted(root.iterdir())
            if path.is_dir() and not (path.name.endswith(".private")
                                      and path.with_name(path.name[:-8]).is_dir())]


def _entry(path: Path) -> Entry:
    state = next((s for suffix, s in _SUFFIX_STATE.items() if path.name.endswith(suffix)),
                 "finished")
    info = _read_json(path / "run.json")
    if info is not None:  # a stopped run has no "final": its last metrics row says
        rows = _read_json(path / "metrics.json") if "final" not in info else None
        final = info.get("final") or (rows[-1] if isinstance(rows, list) and rows else {})
        return Entry(path.name, "run", info.get("stop_reason", state),
                     info.get("rounds_completed", final.get("round")),
                     final.get("central_val_accuracy"), final.get("central_test_accuracy"),
                     info.get("epsilon"), _upper_bound(info))
    if (path / "sweep.json").is_file() or (path / "runs").is_dir():
        return Entry(path.name, "sweep", state)
    if (path / "summary.json").is_file() or any(path.glob("study.*")):
        summary = _read_json(path / "summary.json") or {}
        best = summary.get("best") or {}
        return Entry(path.name, "study", summary.get("stop_reason") or state, None,
                     best.get("validation_accuracy"), best.get("test_accuracy"))
    kind = "run" if (path / "config.toml").is_file() else "other"
    return Entry(path.name, kind, state, checkpoint_round(path))  # killed: resumable?


def _upper_bound(info: dict[str, Any]) -> bool:
    """Whether run.json's ε (if any) is an upper bound; runs written before
    ``epsilon_upper_bound`` existed drew seeded noise by default, so they count as not."""
    return info.get("epsilon") is None or info.get("epsilon_upper_bound") is True


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def format_listing(entries: list[Entry]) -> str:
    """A plain-text table (val/test accuracy final; for a study, its best trial's)."""
    if not entries:
        return "(no runs)"

    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = ("state", "kind", "rounds", "val acc", "test acc", "ε", "name")
    rows = [(e.state, e.kind, num(e.rounds, "d"), num(e.val_accuracy, ".4f"),
             num(e.test_accuracy, ".4f"),
             num(e.epsilon, ".3g") + ("" if e.epsilon_upper_bound else NOT_A_BOUND), e.name)
            for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True))
             + "  " + r[-1] for r in [header, *rows]]
    if not all(e.epsilon_upper_bound for e in entries):
        lines.append(f"{NOT_A_BOUND} ε is not an upper bound: the run's run.json says why "
                     "(epsilon_caveats; older runs without it drew seeded noise by default)")
    return "\n".join(lines)
