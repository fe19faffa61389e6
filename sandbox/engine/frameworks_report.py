"""Tables and plot of ``fedsandbox compare-frameworks`` (see :mod:`sandbox.engine.frameworks`).

Writes ``frameworks.csv`` (one row per mode × DP × seed), ``frameworks.json`` (the same
plus per-round curves, per-mode summaries, agreement between modes and the machine),
``frameworks.md`` (one table, mode × DP, ratios to torch eager; the caption names the CPU,
thread settings and seeds) and ``frameworks.png`` (validation accuracy per round per mode,
client step time per mode).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any

from sandbox.core.stats import mean_ci

#: the mode every ratio is relative to
BASELINE = "torch-eager"
#: mode pairs whose per-round accuracy should agree (same framework, or across frameworks)
AGREEMENT_PAIRS = [("torch-compile", "torch-eager"), ("keras-eager", "keras-graph"),
                   ("keras-xla", "keras-graph"), ("keras-graph", "torch-eager")]

#: per-run scalar columns, in table order
COLUMNS = ["final_val", "final_test", "best_val", "rounds_to_target", "time_to_target_s",
           "time_to_target_ratio", "step_ms", "step_ratio", "compile_s", "build_s",
           "first_update_s", "update_rss_first_mib", "update_rss_steady_mib", "rss_ratio",
           "round_s", "run_s", "process_wall_s", "process_peak_rss_mib"]
_MIB = 1024.0  # KiB per MiB


def steady_step_seconds(record: dict[str, Any]) -> float:
    """Median wall time per step over the client updates after round 1."""
    updates = _updates_after_first_round(record)
    return statistics.median(u["seconds"] / max(u["steps"], 1) for u in updates)


def _updates_after_first_round(record: dict[str, Any]) -> list[dict[str, Any]]:
    first = next((r["clients"] for r in record["rounds"] if r["round"] == 1), 0)
    return record["updates"][first:] or record["updates"]


def _measures(record: dict[str, Any]) -> dict[str, Any]:
    """The scalar measurements of one successful run (no target or ratios yet)."""
    rows = [r for r in record["rounds"] if r["round"] >= 1]
    step = steady_step_seconds(record)
    updates = record["updates"]
    seconds = record["round_seconds"]
    steady_rounds = seconds[2:] or seconds[1:]
    return {
        "final_val": rows[-1]["val"], "final_test": rows[-1]["test"],
        "best_val": max(r["val"] for r in rows),
        "step_ms": 1000 * step,
        "compile_s": sum(max(0.0, u["seconds"] - u["steps"] * step) for u in updates),
        "build_s": record["build_s"], "first_update_s": updates[0]["seconds"],
        "update_rss_first_mib": updates[0]["peak_rss_kib"] / _MIB,
        "update_rss_steady_mib": max(u["peak_rss_kib"] for u in
                                     _updates_after_first_round(record)) / _MIB,
        "round_s": statistics.median(steady_rounds), "run_s": sum(seconds),
        "process_wall_s": record["process_wall_s"],
        "process_peak_rss_mib": record["process_peak_rss_kib"] / _MIB,
        "rss_method": updates[0]["rss_method"],
    }


def _time_to_target(record: dict[str, Any], target: float) -> tuple[int | None, float | None]:
    """First round whose validation accuracy reaches ``target``, and the wall time to it."""
    elapsed = record["build_s"]
    for row, seconds in zip(record["rounds"], record["round_seconds"], strict=True):
        elapsed += seconds
        if row["round"] >= 1 and row["val"] >= target:
            return row["round"], elapsed
    return None, None


def summarize(records: list[dict[str, Any]], *, target: float | None) -> dict[str, Any]:
    """Per-run rows with targets and ratios, per-mode summaries, agreement between modes."""
    ok = [r for r in records if r["status"] == "ok"]
    for record in ok:
        record["measures"] = _measures(record)
    targets = {}
    for private in sorted({r["dp"] for r in records}):
        finals = [r["measures"]["final_val"] for r in ok if r["dp"] == private]
        targets[private] = target if target is not None else (
            0.9 * max(finals) if finals else None)
    for record in ok:
        goal = targets[record["dp"]]
        record["measures"]["target"] = goal
        rounds, seconds = _time_to_target(record, goal)
        record["measures"].update(rounds_to_target=rounds, time_to_target_s=seconds)
    _add_ratios(ok)
    return {"targets": {("dp" if k else "nodp"): v for k, v in targets.items()},
            "runs": records, "summary": _summary(records), "agreement": _agreement(ok)}


def _add_ratios(ok: list[dict[str, Any]]) -> None:
    baselines = {(r["dp"], r["seed"]): r["measures"] for r in ok if r["mode"] == BASELINE}
    pairs = {"step_ratio": "step_ms", "time_to_target_ratio": "time_to_target_s",
             "rss_ratio": "update_rss_first_mib"}
    for record in ok:
        base = baselines.get((record["dp"], record["seed"]))
        for ratio, key in pairs.items():
            value, ref = record["measures"][key], base and base[key]
            # below 1 MiB a delta is allocator noise, not a size to divide by
            usable = ref is not None and (ref >= 1.0 if ratio == "rss_ratio" else ref > 0)
            record["measures"][ratio] = value / ref if value is not None and usable else None


def _summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (mode, DP): mean ± 95 % CI over seeds of every column; unavailable reasons."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["mode"], record["dp"]), []).append(record)
    summary = []
    for (mode, private), group in groups.items():
        entry: dict[str, Any] = {"mode": mode, "dp": private, "seeds": len(group)}
        ok = [r["measures"] for r in group if r["status"] == "ok"]
        if len(ok) < len(group):
            entry["unavailable"] = next(r["reason"] for r in group if r["status"] != "ok")
        for column in COLUMNS:
            values = [m[column] for m in ok if m.get(column) is not None]
            if values and all(math.isfinite(v) for v in values):
                ci = mean_ci(values)
                entry[column] = {"mean": ci.mean, "half_width": ci.half_width, "n": ci.n}
        if ok:
            entry["rss_method"] = ok[0]["rss_method"]
            entry["curve_val"] = _mean_curve([r for r in group if r["status"] == "ok"])
        summary.append(entry)
    return summary


def _mean_curve(group: list[dict[str, Any]]) -> list[float]:
    curves = [[row["val"] for row in r["rounds"]] for r in group]
    return [statistics.fmean(values) for values in zip(*curves, strict=True)]


def _agreement(ok: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Largest per-round |Δ validation accuracy| between paired modes (same DP, seed)."""
    by_key = {(r["mode"], r["dp"], r["seed"]): r for r in ok}
    rows = []
    for (mode, private, seed), record in sorted(by_key.items(), key=str):
        for first, second in AGREEMENT_PAIRS:
            other = by_key.get((second, private, seed))
            if mode != first or other is None:
                continue
            diffs = [abs(a["val"] - b["val"]) for a, b in
                     zip(record["rounds"], other["rounds"], strict=True)]
            rows.append({"modes": f"{first} vs {second}", "dp": private, "seed": seed,
                         "max_abs_val_diff": max(diffs),
                         "identical_rounds": sum(d == 0 for d in diffs),
                         "rounds": len(diffs)})
    return rows


def write_report(out: Path, report: dict[str, Any], environment: dict[str, Any], *,
                 command: str) -> None:
    report = {"command": command, "environment": environment, **report}
    (out / "frameworks.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    with (out / "frameworks.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["mode", "dp", "seed", "status", *COLUMNS, "reason"])
        for run in report["runs"]:
            measures = run.get("measures", {})
            writer.writerow([run["mode"], run["dp"], run["seed"], run["status"],
                             *[measures.get(c, "") for c in COLUMNS], run.get("reason", "")])
    (out / "frameworks.md").write_text(markdown(report))
    plot(out / "frameworks.png", report)


def _cell(entry: dict[str, Any], column: str, digits: int) -> str:
    value = entry.get(column)
    if value is None:
        return "–"
    text = f"{value['mean']:.{digits}f}"
    return text if value["half_width"] is None else f"{text} ± {value['half_width']:.{digits}f}"


def caption(report: dict[str, Any]) -> str:
    env = report["environment"]
    seeds = max(entry["seeds"] for entry in report["summary"])
    spread = ("single seed: no confidence interval" if seeds == 1 else
              f"mean ± 95 % CI over {seeds} seeds")
    targets = ", ".join(f"{k}: {v:.4f}" for k, v in report["targets"].items() if v is not None)
    return (f"`{report['command']}` — {env['date']}; CPU: {env['cpu']} ({env['cpu_count']} "
            f"cores); threads: runtime.threads_per_client = {env['threads_per_client']} "
            f"(torch intra-op, TensorFlow intra- and inter-op; OMP_NUM_THREADS the same), one "
            f"process per mode; load average before/after {env['load_average_before']} / "
            f"{env['load_average_after']}; {spread}; target validation accuracy {targets}.")


def markdown(report: dict[str, Any]) -> str:
    header = ("| mode | DP | final val acc | final test acc | rounds to target | time to "
              "target (s) | × torch eager | client step (ms) | × torch eager | compile "
              "(s) | build (s) | update peak RSS first / steady (MiB) | × torch eager (first) | "
              "status |")
    lines = [f"**Framework comparison.** {caption(report)}", "", header,
             "|" + "---|" * 14]
    for entry in sorted(report["summary"], key=lambda e: (e["dp"], e["mode"])):
        status = ("ok" if "unavailable" not in entry else
                  f"unavailable: {entry['unavailable']}")
        lines.append("| " + " | ".join([
            entry["mode"], "DP-SGD" if entry["dp"] else "off",
            _cell(entry, "final_val", 4), _cell(entry, "final_test", 4),
            _cell(entry, "rounds_to_target", 1), _cell(entry, "time_to_target_s", 1),
            _cell(entry, "time_to_target_ratio", 2), _cell(entry, "step_ms", 2),
            _cell(entry, "step_ratio", 2), _cell(entry, "compile_s", 1),
            _cell(entry, "build_s", 1),
            f"{_cell(entry, 'update_rss_first_mib', 1)} / "
            f"{_cell(entry, 'update_rss_steady_mib', 1)}",
            _cell(entry, "rss_ratio", 2), status.replace("|", "/")]) + " |")
    method = next((e["rss_method"] for e in report["summary"] if "rss_method" in e), "n/a")
    lines += ["", f"Peak RSS of a client update: {method}; steady = the largest after round "
              "1. Compile = wall time of all client updates above steps × the steady step "
              "time; build = framework import and trainer construction.", ""]
    if report["agreement"]:
        lines += ["| modes | DP | seed | max per-round \\|Δ val acc\\| | identical rounds |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a['modes']} | {'DP-SGD' if a['dp'] else 'off'} | {a['seed']} | "
                  f"{a['max_abs_val_diff']:.4f} | {a['identical_rounds']}/{a['rounds']} |"
                  for a in report["agreement"]]
    return "\n".join(lines) + "\n"


def plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [e for e in report["summary"] if "curve_val" in e]
    modes = sorted({e["mode"] for e in report["summary"]})
    colors = {m: f"C{i}" for i, m in enumerate(modes)}
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5))
    for entry in summary:
        curves.plot(range(len(entry["curve_val"])), entry["curve_val"],
                    color=colors[entry["mode"]], linestyle="--" if entry["dp"] else "-",
                    label=f"{entry['mode']}{' DP' if entry['dp'] else ''}")
    curves.set(xlabel="round", ylabel="validation accuracy", title="accuracy per round")
    curves.legend(fontsize=7)
    width = 0.4
    for offset, private in ((-width / 2, False), (width / 2, True)):
        values = [next((e["step_ms"]["mean"] for e in summary
                        if e["mode"] == m and e["dp"] == private and "step_ms" in e), 0.0)
                  for m in modes]
        drawn = bars.bar([i + offset for i in range(len(modes))], values, width,
                         label="DP-SGD" if private else "no DP", hatch="//" if private else None)
        bars.bar_label(drawn, fmt="%.1f", fontsize=7)
    bars.set_xticks(range(len(modes)), modes, rotation=20)
    bars.set(ylabel="client step time (ms, median)", title="client step time (0: unavailable)")
    bars.legend(fontsize=7)
    env = report["environment"]
    fig.suptitle(f"{env['cpu']}, threads_per_client = {env['threads_per_client']}, "
                 f"{env['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
