"""Report sections about the machinery: PyTorch vs Keras (``sandbox.engine.frameworks``),
the TensorFlow Federated twin check, and the cost of a round on each backend."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from sandbox.core.errors import SandboxError
from sandbox.engine.preflight import load_config
from sandbox.paper import figures
from sandbox.paper.model import Figure, Section, Table, cell, ci, estimate_dict, seeds_note
from sandbox.paper.runs import QUIET


class SectionUnavailable(SandboxError):
    """A section's tool is missing from this checkout or machine."""


def _config_hash(path: Path, **extra) -> str:
    import hashlib

    text = json.dumps({"config": load_config(path).config_hash(), **extra}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# --- framework comparison ------------------------------------------------------------

def frameworks_hashes(spec, base: Path) -> dict[str, str]:
    return {spec.config: _config_hash(base / spec.config, seeds=spec.seeds, modes=spec.modes,
                                      dp=spec.dp)}


def frameworks(spec, base: Path, work: Path) -> Section:
    try:
        from sandbox.engine.frameworks import compare_frameworks
    except ImportError as exc:
        raise SectionUnavailable(
            "the framework comparison needs sandbox.engine.frameworks.compare_frameworks, "
            f"which this checkout does not have ({exc})") from None
    out = Path(compare_frameworks(base / spec.config, work / "frameworks", seeds=spec.seeds,
                                  dp=tuple(spec.dp), modes=tuple(spec.modes) or None))
    shutil.copyfile(out / "frameworks.png", work / "frameworks.png")
    payload = json.loads((out / "frameworks.json").read_text())
    tables = markdown_tables((out / "frameworks.md").read_text())
    curves: dict[str, list[list[float]]] = {}
    for record in payload["runs"]:
        if record.get("status") == "ok":
            label = f"{record['mode']}{' + DP-SGD' if record['dp'] else ''}"
            curves.setdefault(label, []).append([r["val"] for r in record["rounds"]])
    figures.curves(curves, work / "framework_accuracy.png",
                   title="Execution modes: validation accuracy", ylabel="validation accuracy")
    return Section(
        "frameworks", "Framework comparison: PyTorch vs Keras",
        text=f"`{spec.config}` in each execution mode (sandbox/engine/frameworks.py: one "
             f"fresh process per run), DP-SGD {spec.dp}, {spec.seeds} seed(s) per setting. "
             "Accuracies are reproduced by a rebuild; step times, compile cost, memory and "
             "time to target are measured on this machine under its load.",
        tables=tables,
        figures=[Figure("framework_accuracy.png", "Validation accuracy per round of every "
                        "execution mode (lines of equal numbers overlap). "
                        + seeds_note({spec.seeds})),
                 Figure("frameworks.png", "Accuracy per round and client step time per mode, "
                        "as sandbox/engine/frameworks_report.py draws them (accuracy: the mean "
                        "curve over seeds, its band is in the figure above; step time: mean "
                        "over seeds of each run's median step, CI in the table). Timings are "
                        "measured under this machine's load and not reproduced by a rebuild.",
                        timing=True)],
        numbers=framework_numbers(payload),
        timings={"runs": [{k: r.get(k) for k in ("mode", "dp", "seed")}
                          | {"measures": r.get("measures")} for r in payload["runs"]],
                 "environment": payload.get("environment")})


#: per-run measures that a rebuild reproduces (the rest are times and memory)
REPRODUCED = ("final_val", "final_test", "best_val", "target", "rounds_to_target")


def framework_numbers(payload: dict) -> dict:
    """The accuracies of frameworks.json (and the agreement between modes), no timings."""
    runs = [{k: r.get(k) for k in ("mode", "dp", "seed", "status")}
            | {k: (r.get("measures") or {}).get(k) for k in REPRODUCED}
            for r in payload["runs"]]
    return {"runs": runs, "targets": payload.get("targets"),
            "agreement": payload.get("agreement")}


def markdown_tables(text: str) -> list[Table]:
    """The pipe tables of a markdown file; the paragraph before each is its caption."""
    tables, caption, block = [], [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip().replace("\\|", "|")
                          for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
            continue
        if block:
            tables.append(Table(" ".join(caption) or "Framework comparison.", block[0],
                                block[2:]))
            block, caption = [], []
        if line.startswith("#"):
            caption = []
        elif line.strip():
            caption.append(line.replace("**", "").strip())
    return tables


# --- TensorFlow Federated twin -------------------------------------------------------

def twin_hashes(spec, base: Path) -> dict[str, str]:
    return {spec.config: _config_hash(base / spec.config)}


def twin(spec, base: Path, work: Path) -> Section:
    from sandbox.engine.twin import run_twin
    from sandbox.engine.twin.runner import TwinError, tff_python

    title = "TensorFlow Federated twin check"
    try:
        tff_python()
    except TwinError as exc:
        return Section("twin", title, status="skipped", reason=str(exc))
    twin_dir = run_twin(base / spec.config, [f"output.dir={work / 'runs'}"])
    comparison = json.loads((twin_dir / "comparison.json").read_text())
    shutil.copyfile(twin_dir / "comparison.png", work / "twin.png")
    summary = comparison["summary"]
    rows = [[k.replace("_", " "), f"{v:.6g}" if isinstance(v, float) else str(v)]
            for k, v in summary.items()]
    return Section(
        "twin", title,
        text=f"`{spec.config}` run in the sandbox and in TensorFlow Federated 0.87 on the "
             "same exported inputs (sandbox/engine/twin, docs/twins.md).",
        tables=[Table("Sandbox vs TFF on one identical run (single seed: a twin compares "
                      "two implementations of the same computation, draw for draw).",
                      ["quantity", "value"], rows)],
        figures=[Figure("twin.png", "Accuracy and loss per round of both sides and the "
                        "largest weight difference. Single seed: no confidence interval.")],
        numbers={"summary": summary, "rounds": [
            {k: v for k, v in r.items() if k != "max_abs_dw_per_layer"}
            for r in comparison["rounds"]], "notes": comparison.get("notes", [])})


# --- backend cost per round ----------------------------------------------------------

def backend_cost_hashes(spec, base: Path) -> dict[str, str]:
    return {spec.config: _config_hash(base / spec.config, backends=spec.backends,
                                      repeats=spec.repeats)}


def backend_cost(spec, base: Path, work: Path) -> Section:
    """Seconds per round (rounds ≥ 1) on each backend; one untimed warm-up run first."""
    from sandbox.engine.api import run

    table, numbers, timings, bars = [], [], [], {}
    threads = ""
    for backend in spec.backends:
        cfg = load_config(base / spec.config, {**QUIET, "backend": backend,
                                               "output.dir": str(work / "runs")})
        runtime = cfg.runtime
        threads = (f"Threads: runtime.threads_per_client = {runtime.threads_per_client}, "
                   f"runtime.server_threads = {runtime.server_threads}; pool workers: "
                   f"{runtime.workers or os.cpu_count()}.")
        run(cfg)  # warm-up: imports, worker processes, compiled kernels
        per_round, accuracy = [], []
        for _ in range(spec.repeats):
            result = run(cfg)
            seconds = result.round_seconds[1:]
            per_round.append(sum(seconds) / len(seconds))
            accuracy.append(result.final["central_test_accuracy"])
        cost = ci(per_round)
        bars[backend] = cost
        table.append([backend, str(cost.n), cell(cost, 4), cell(ci(accuracy))])
        numbers.append({"backend": backend, "final_test_accuracy": accuracy})
        timings.append({"backend": backend, "seconds_per_round": estimate_dict(cost),
                        "runs": per_round})
    figures.bars(bars, work / "backend_cost.png", title="Cost of a round per backend",
                 ylabel="seconds per round")
    note = (f"Mean ± 95 % CI over N = {spec.repeats} timed runs after one warm-up run per "
            "backend. Timings are measured, not reproduced: a rebuild gives other values and "
            f"the identity check leaves them out. {threads}")
    return Section(
        "backend_cost", "Backend cost per round",
        text=f"`{spec.config}` on each backend, in this process; every backend computes the "
             "same numbers (final test accuracy column). Start-up cost per backend in a fresh "
             "process, and the ray and deployment backends: benchmarks/backend_cost.py.",
        tables=[Table(f"Seconds per round (rounds ≥ 1). {note}",
                      ["backend", "N", "seconds per round", "final test accuracy"], table)],
        figures=[Figure("backend_cost.png", f"Seconds per round. {note}", timing=True)],
        numbers={"backends": numbers}, timings={"backends": timings})
