"""The top of ``benchmarks/RESULTS.md``: every speed figure beside its goal, from one bench run.

Reads what the benchmarks of ``nox -s bench`` wrote to ``benchmarks/out/*.json`` (runtime at
1 and 2 threads, DP-SGD step time at 1 and 2 threads, vectorized clients, quickstart wall
time) and writes the section ``## Summary`` right under the title. A figure whose
benchmark did not run says so. Ratios are within one benchmark run.

    python benchmarks/summary.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_file import RESULTS, replace_section  # noqa: E402

OUT = Path(__file__).parent / "out"
MARKER = "## Summary"


def _load(name: str) -> dict | None:
    path = OUT / name
    return json.loads(path.read_text()) if path.is_file() else None


def _row(figure: str, goal: str, measured: str, source: str) -> str:
    return f"| {figure} | {goal} | {measured} | {source} |"


def runtime_rows(threads: int) -> list[str]:
    data = _load(f"runtime_torch_threads{threads}.json")
    label = f"{threads} thread{'s' if threads > 1 else ''}"
    source = f"Runtime overhead (torch, {label})"
    if data is None:
        return [_row(f"inline/bare ({label})", "≤ 1.2", "not run", source)]
    rows = []
    for r in data["rows"]:
        at = f"{r['clients']} clients × {r['rounds']} rounds, {label}"
        met = "met" if r["inline/bare"] <= 1.2 else "not met"
        rows.append(_row(f"inline/bare, {at}", "≤ 1.2", f"{r['inline/bare']:.2f} ({met})",
                         source))
        if r["clients"] >= 200 and r["pool_s"] == r["pool_s"]:
            met = "met" if r["inline/pool"] >= 1.7 else "not met"
            rows.append(_row(f"pool speed-up over inline, {at}", "≥ 1.7",
                             f"{r['inline/pool']:.2f} ({met})", source))
        if r["ray_s"] == r["ray_s"]:
            rows.append(_row(f"ray/inline, {at}", "report", f"{r['ray/inline']:.1f}", source))
    for name, fit in data.get("fit", {}).items():
        rows.append(_row(f"t_round = a + b·K, {name}, K ∈ {fit['K']}, {label}", "report",
                         f"a = {1e3 * fit['a_s']:.1f} ms, b = {1e3 * fit['b_s']:.3f} ms",
                         source))
    return rows


def dp_rows(threads: int) -> list[str]:
    data = _load(f"dp_threads{threads}.json")
    label = f"{threads} thread{'s' if threads > 1 else ''}"
    source = f"DP-SGD step time ({label})"
    if data is None:
        return [_row(f"DP-SGD / plain step ({label})", "torch ≤ 2", "not run", source)]
    goals = {"torch": 2.0, "keras": 2.5}
    rows = []
    for r in data["rows"]:
        goal = goals[r["framework"]]
        met = "met" if r["ratio"] <= goal else "not met"
        rows.append(_row(f"DP-SGD / plain step, {r['framework']} "
                         f"{r['model'].split(', input')[0]}, {label}", f"≤ {goal}",
                         f"{r['ratio']:.2f} ({met})", source))
    return rows


def vectorized_rows() -> list[str]:
    data = _load("vectorized.json")
    source = "benchmarks/out/vectorized.md"
    if data is None:
        return [_row("vectorized speed-up over the sequential bare loop, 100+ clients",
                     "≥ 5", "not run", source)]
    rows = []
    for r in data:
        if r.get("dp") or r["clients"] < 100:
            continue
        label = f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}"
        met = "met" if r["speedup"] >= 5 else "not met"
        rows.append(_row(f"vectorized speed-up over the sequential bare loop, {r['clients']} "
                         f"clients, {label}", "≥ 5 at 100+", f"{r['speedup']:.1f} ({met})",
                         source))
        rows.append(_row(f"vectorized backend round vs inline round, {r['clients']} clients, "
                         f"{label}", "report", f"{r['round_speedup']:.1f}×", source))
    return rows


def step_gap_rows(threads: int) -> list[str]:
    data = _load(f"step_gap_threads{threads}.json")
    label = f"{threads} thread{'s' if threads > 1 else ''}"
    source = f"Plain step: torch eager vs Keras graph ({label})"
    if data is None:
        return [_row(f"plain MLP step, torch / Keras ({label})", "explain", "not run", source)]
    r = data["row"]
    return [_row(f"plain MLP step, torch eager / Keras graph, {label}", "explain",
                 f"{r['torch Trainer.fit']:.3f} / {r['keras Trainer.fit']:.3f} ms = "
                 f"{r['torch Trainer.fit'] / r['keras Trainer.fit']:.1f}× "
                 f"({r['aten ops per step']:.0f} aten ops per torch step; arithmetic "
                 f"{r['numpy matmuls']:.3f} ms)", source)]


def quickstart_rows() -> list[str]:
    data = _load("quickstart_threads1.json")
    source = "bench_quickstart.py"
    if data is None:
        return [_row("quickstart wall time incl. imports", "report", "not run", source)]
    return [_row(f"quickstart wall time incl. imports, {r['framework']}, 1 thread", "report",
                 f"{r['process_s']:.0f} s (run {r['run_wall_s']:.0f} s; val / test acc "
                 f"{r['final_val_accuracy']:.3f} / {r['final_test_accuracy']:.3f})", source)
            for r in data["rows"]]


def main() -> None:
    machine = next((d["machine"] for name in ("runtime_torch_threads1.json", "dp_threads1.json")
                    if (d := _load(name))), "unknown machine")
    lines = [MARKER, "", f"Every figure of `nox -s bench` beside its goal ({machine}; each "
             "ratio within one run of its benchmark; details and commands in the sections "
             "below).", "", "| figure | goal | measured | section |", "|---|---|---|---|",
             *runtime_rows(1), *runtime_rows(2), *vectorized_rows(), *dp_rows(1), *dp_rows(2),
             *step_gap_rows(1), *step_gap_rows(2),
             *quickstart_rows(), ""]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if MARKER not in text:  # first time: right under the title
        title, _, rest = text.partition("\n\n")
        RESULTS.write_text(f"{title}\n\n{MARKER}\n\n{rest}")
    replace_section(MARKER, "\n".join(lines))


if __name__ == "__main__":
    main()
