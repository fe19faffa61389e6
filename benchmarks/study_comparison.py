"""Federated HPO baselines on one config and one budget of client-rounds (``nox -s study``).

Methods, each on ``configs/search_digits.toml``'s space and experiment:

* random search without pruning (Optuna RandomSampler),
* TPE + Hyperband pruning by round (Optuna),
* KerasTuner Hyperband (Hyperband's epochs = federated rounds).

Each runs until it has used the same number of client-rounds (a client training in one
round = 1). Reported per method and seed: best accuracy within the budget and the
client-rounds used until a trial first reached the target accuracy (counting every
round of every trial before it, pruned ones included).

    nox -s study                                  # 3 seeds, writes benchmarks/RESULTS.md
    python benchmarks/study_comparison.py --seeds 0 --budget 2400 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_file import replace_section  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "search_digits.toml"
OUT = Path(__file__).parent / "out" / "study"
METHODS = {
    "random, no pruning": {"backend": "optuna", "sampler": "random", "pruner": "none"},
    "TPE + Hyperband pruning": {"backend": "optuna", "sampler": "tpe", "pruner": "hyperband"},
    "KerasTuner Hyperband": {"backend": "kerastuner", "oracle": "hyperband"},
}


def trial_curve(study_dir: Path) -> list[tuple[int, list[float], int]]:
    """Per trial in order: (client-rounds used, accuracy per round, clients per round)."""
    import optuna

    study = optuna.load_study(study_name=study_dir.name,
                              storage=f"sqlite:///{study_dir / 'study.db'}")
    rows = []
    for t in study.get_trials(deepcopy=False):
        rounds = t.user_attrs.get("rounds_completed", 0) or 0
        used = t.user_attrs.get("client_rounds", 0) or 0
        per_round = used // rounds if rounds else 0
        rows.append((used, list(t.user_attrs.get("accuracy_per_round", [])), per_round))
    return rows


def to_target(rows, target: float) -> int | None:
    spent = 0
    for used, accuracies, per_round in rows:
        for index, accuracy in enumerate(accuracies, 1):
            if accuracy >= target:
                return spent + index * per_round
        spent += used
    return None


def best_within(rows) -> float:
    return max((max(acc) for _, acc, _ in rows if acc), default=float("nan"))


def run_method(name: str, settings: dict, seed: int, budget: int) -> dict:
    from search import run_search

    kind = settings.get("sampler", settings.get("oracle"))
    study_name = f"{name.split()[0].lower()}-{kind}-s{seed}"
    overrides = {**settings, "name": study_name, "seed": seed, "n_trials": 10_000,
                 "client_round_budget": budget, "output_dir": str(OUT)}
    if settings["backend"] == "kerastuner":
        overrides["n_trials"] = 50
    start = time.perf_counter()
    out = run_search(CONFIG, overrides)
    wall = time.perf_counter() - start
    rows = trial_curve(out)
    return {"method": name, "seed": seed, "trials": len(rows),
            "client_rounds": sum(r[0] for r in rows), "best": best_within(rows),
            "rows": rows, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=3600, help="client-rounds per method")
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--also-target", type=float, default=0.95,
                        help="second target reported in the table")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import shutil

    shutil.rmtree(OUT, ignore_errors=True)
    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        for name, settings in METHODS.items():
            result = run_method(name, settings, seed, args.budget)
            result["to_target"] = to_target(result["rows"], args.target)
            result["to_also"] = to_target(result["rows"], args.also_target)
            results.append(result)
            print(f"== {name} seed {seed}: {result['trials']} trials, "
                  f"{result['client_rounds']} client-rounds, best {result['best']:.4f}, "
                  f"to {args.target}: {result['to_target']} ({result['wall_s']:.0f} s)",
                  flush=True)
    total = time.perf_counter() - started
    (OUT / "comparison.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "rows"} for r in results], indent=2) + "\n")
    docs = Path(__file__).resolve().parents[1] / "docs"
    plot(results, args.target, docs / "study_comparison.png")
    if not args.no_write:
        write(results, args, total)


def plot(results, target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = dict(zip(METHODS, ("tab:gray", "tab:blue", "tab:orange"), strict=True))
    for r in results:
        xs, ys, spent, best = [0], [0.0], 0, 0.0
        for used, accuracies, per_round in r["rows"]:
            for index, accuracy in enumerate(accuracies, 1):
                best = max(best, accuracy)
                xs.append(spent + index * per_round)
                ys.append(best)
            spent += used
        ax.step(xs, ys, where="post", color=colors[r["method"]], alpha=0.8,
                label=r["method"] if r["seed"] == results[0]["seed"] else None)
    ax.axhline(target, ls="--", color="black", lw=0.8, label=f"target {target}")
    ax.set_xlabel("client-rounds used")
    ax.set_ylabel("best centralized accuracy so far")
    ax.set_ylim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title("Federated HPO on search_digits: same client-round budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results, args, total: float) -> None:
    lines = [
        "## Federated HPO comparison", "",
        f"`nox -s study` on {dt.date.today()}, {os.cpu_count()} cores, {total / 60:.1f} min in "
        f"all. Space and experiment: `configs/search_digits.toml` (digits, 10 clients, "
        f"12 rounds). Budget {args.budget} client-rounds per method and seed; target "
        f"centralized accuracy {args.target}.", "",
        f"| method | seed | trials | client-rounds | best accuracy | client-rounds to "
        f"{args.target} | to {args.also_target} |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['method']} | {r['seed']} | {r['trials']} | {r['client_rounds']} | "
                     f"{r['best']:.4f} | {r['to_target'] or 'not reached'} | "
                     f"{r['to_also'] or 'not reached'} |")
    lines.append("")
    for key, target in (("to_target", args.target), ("to_also", args.also_target)):
        medians = {}
        for name in METHODS:
            reached = [r[key] or args.budget * 10 for r in results if r["method"] == name]
            medians[name] = statistics.median(reached)
        ratio = medians["random, no pruning"] / medians["TPE + Hyperband pruning"]
        lines.append(
            f"Target {target}: median client-rounds to target (not reached = 10× budget): "
            + ", ".join(f"{k} {v:.0f}" for k, v in medians.items())
            + f". **Unpruned random / pruned TPE = {ratio:.2f}×** (goal ≥ 3×).")
        lines.append("")
    lines += ["![comparison](../docs/study_comparison.png)", ""]
    replace_section("## Federated HPO comparison", "\n".join(lines))


if __name__ == "__main__":
    main()
