"""Every registered strategy on strongly non-IID data, and robust aggregation under attack.

``nox -s compare`` (or ``python -m benchmarks.compare_strategies``) runs

1. every strategy in the registry (``strategies.available()``, so one registered by a
   research script joins too: ``examples/custom_strategy.py``) on
   ``configs/compare_synthetic.toml`` (Synthetic(1, 1), 30 clients, natural split) and
   ``configs/compare_digits.toml`` (digits, Dirichlet α = 0.1), and
2. the robustness sweeps ``configs/robust_*.toml`` (FedAvg, FedMedian, FedTrimmedAvg,
   Krum, Multi-Krum, Bulyan under 0 %, 10 % and 30 % sign-flipping clients),

and writes ``benchmarks/out/compare/`` (``strategies.csv``, ``robustness.csv``,
``accuracy.png``: validation accuracy per round, one line per strategy) and the tables
in ``benchmarks/COMPARE.md``. Columns: the final round's validation and test accuracy;
the first round whose validation accuracy reaches 90 % of the run's best validation
accuracy (selection on validation, never test); client compute, the examples the
clients processed in all rounds (and up to that round). The runs themselves go to a
temporary directory.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sandbox
import strategies
from sandbox.core.errors import ConfigError
from sandbox.engine.sweep import load_sweep

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"synthetic": ROOT / "configs" / "compare_synthetic.toml",
            "digits": ROOT / "configs" / "compare_digits.toml"}
OUT = ROOT / "benchmarks" / "out" / "compare"
REPORT = ROOT / "benchmarks" / "COMPARE.md"
#: share of the best validation accuracy that counts as "reached"
TARGET = 0.9
QUIET = {"output.progress": False, "output.plot": False, "output.tensorboard": False,
         "output.checkpoint": False, "output.save_weights": False}


def rounds_to_target(rows: list[dict[str, Any]]) -> int | None:
    """First round whose validation accuracy is at least ``TARGET`` × the run's best."""
    scored = [(r["round"], r["central_val_accuracy"]) for r in rows
              if r["round"] >= 1 and r.get("central_val_accuracy") is not None]
    if not scored:
        return None
    best = max(accuracy for _, accuracy in scored)
    return next(rnd for rnd, accuracy in scored if accuracy >= TARGET * best)


def client_examples(rows: list[dict[str, Any]], last_round: int | None = None) -> int | None:
    """Examples the clients processed in rounds 1..``last_round`` (all rounds: None).

    Read from the per-client ``local_examples`` column that heterogeneous federations
    record; ``None`` if the rows have none.
    """
    total, seen = 0, False
    for row in rows:
        if row["round"] < 1 or (last_round is not None and row["round"] > last_round):
            continue
        counts = row.get("local_examples")
        if counts:
            seen = True
            total += sum(int(v) for v in counts.values())
    return total if seen else None


def summarize(result: sandbox.RunResult) -> dict[str, Any]:
    """The table's columns of one run."""
    rows = result.rounds
    reached = rounds_to_target(rows)
    return {
        "final_val_accuracy": result.final.get("central_val_accuracy"),
        "final_test_accuracy": result.final.get("central_test_accuracy"),
        "rounds_to_90pct_best_val": reached,
        "client_examples": client_examples(rows),
        "client_examples_to_90pct": None if reached is None else client_examples(rows, reached),
        "stop_reason": result.stop_reason.value,
        "wall_s": round(result.wall_s, 1),
        "val_accuracy_per_round": [r.get("central_val_accuracy") for r in rows],
    }


def run_strategy(path: Path, strategy: str, out: Path, overrides: dict[str, Any]
                 ) -> dict[str, Any]:
    """One run of ``strategy`` on the config at ``path``; a refused combination is noted."""
    settings = {**QUIET, **overrides, "output.dir": str(out),
                "federation.strategy": strategy, "federation.strategy_args": {}}
    try:
        cfg = sandbox.load_config(path, settings)
        return summarize(sandbox.run(cfg))
    except sandbox.SandboxError as exc:  # refused before it ran, or stopped (diverged)
        reason = getattr(exc, "stop_reason", None)
        row = {"stop_reason": reason.value if reason is not None else "refused",
               "note": str(exc).splitlines()[-1].strip()}
        partial = getattr(exc, "run_dir", None)
        if partial is not None and (partial / "metrics.json").is_file():
            rows = json.loads((partial / "metrics.json").read_text())
            row["val_accuracy_per_round"] = [r.get("central_val_accuracy") for r in rows]
        return row


def compare(names: list[str], out: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for dataset, path in DATASETS.items():
        for name in names:
            started = time.perf_counter()
            row = {"dataset": dataset, "strategy": name,
                   **run_strategy(path, name, out / dataset, overrides)}
            rows.append(row)
            print(f"{dataset:9s} {name:13s} val {_fmt(row.get('final_val_accuracy'))} "
                  f"test {_fmt(row.get('final_test_accuracy'))} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def robustness(out: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of every ``configs/robust_*.toml`` sweep."""
    rows = []
    for path in sorted((ROOT / "configs").glob("robust_*.toml")):
        _, points = load_sweep(path, {**QUIET, **overrides, "output.dir": str(out)})
        for combo, cfg in points:
            result = sandbox.run(cfg)
            attackers = len(result.rounds[-1].get("malicious_partitions") or [])
            row = {"strategy": cfg.federation.strategy, **combo,
                   "malicious_clients": attackers, "clients": cfg.data.num_clients,
                   **summarize(result)}
            rows.append(row)
            print(f"robust {row['strategy']:13s} attack {combo['attack.fraction']:.1f} "
                  f"val {_fmt(row['final_val_accuracy'])}", flush=True)
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v
                             for k, v in row.items()})


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Validation accuracy per round, one panel per dataset, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5),
                             squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for row in rows:
            curve = row.get("val_accuracy_per_round")
            if row["dataset"] == dataset and curve:
                ax.plot(range(len(curve)), curve, label=row["strategy"],
                        linestyle="--" if row["strategy"] in strategies.mean_aggregating()
                        else "-")
        ax.set(title=f"{dataset} (dashed: mean-aggregating)", xlabel="round",
               ylabel="central validation accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(compared: list[dict[str, Any]], robust: list[dict[str, Any]], wall_s: float,
           command: str) -> str:
    table = ["strategy", "final_val_accuracy", "final_test_accuracy",
             "rounds_to_90pct_best_val", "client_examples", "client_examples_to_90pct",
             "stop_reason"]
    parts = [f"# Strategy comparison\n\nGenerated by `{command}` on "
             f"{dt.date.today().isoformat()} in {wall_s / 60:.1f} min "
             "(benchmarks/compare_strategies.py; plot: benchmarks/out/compare/accuracy.png). "
             f"Rounds to {TARGET:.0%} of the best validation accuracy; client compute = "
             "examples processed by the clients (all rounds / up to that round)."]
    for dataset, path in DATASETS.items():
        rows = [r for r in compared if r["dataset"] == dataset]
        if rows:
            parts.append(f"## {dataset} (`{path.relative_to(ROOT)}`)\n\n"
                         + markdown(rows, table))
    if robust:
        parts.append("## Robustness (`configs/robust_*.toml`, sign flip × 4)\n\n" + markdown(
            robust, ["strategy", "attack.fraction", "malicious_clients", "clients",
                     "final_val_accuracy", "final_test_accuracy", "stop_reason"]))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="*", default=None,
                        help="registered strategies to compare (default: all)")
    parser.add_argument("--rounds", type=int, default=None, help="override every rounds")
    parser.add_argument("--skip-robustness", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    names = args.strategies or strategies.available()
    unknown = sorted(set(names) - set(strategies.available()))
    if unknown:
        raise ConfigError(f"--strategies: {unknown} are not registered; allowed: "
                          f"{', '.join(strategies.available())}")
    overrides = {} if args.rounds is None else {"rounds": args.rounds}
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compare-") as runs:
        compared = compare(names, Path(runs), overrides)
        robust = [] if args.skip_robustness else robustness(Path(runs) / "robust", overrides)
    wall_s = time.perf_counter() - started
    write_csv(args.out / "strategies.csv", compared)
    if robust:
        write_csv(args.out / "robustness.csv", robust)
    plot(compared, args.out / "accuracy.png")
    extra = sys.argv[1:] if argv is None else argv
    command = "nox -s compare" + (f" -- {' '.join(extra)}" if extra else "")
    args.report.write_text(report(compared, robust, wall_s, command))
    print(f"wall time {wall_s / 60:.1f} min; wrote {args.report} and {args.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
