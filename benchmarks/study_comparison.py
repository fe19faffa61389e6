"""Does pruning pay in federated HPO? A 2×2 design at an equal client-round budget.

``nox -s study`` runs, on digits and on mnist1d (harder: digits saturates), the space and
experiment of ``configs/search_digits.toml`` with

* sampler {random, TPE (Bergstra et al. 2011)} × pruner {none, Hyperband (Li et al.
  2018; ours, brackets by slot)}, every arm with the same client-round budget;
* an ablation on mnist1d after Kuo et al. (MLSys 2023): TPE + Hyperband and random
  search scored on the exact server-held validation set, on the federated validation of
  a seeded 20% of the clients, and on that federated validation with DP noise on the
  aggregated counts (its ε charged to the study's ledger).

Per dataset, the *target* is a validation accuracy fixed before any arm is compared:
``--target-fraction`` (0.97) of the best validation accuracy that any study of that
dataset reached. Client-rounds to target counts every client-round of every trial
(pruned ones included) until a trial first reaches the target on the *exact* server-held
validation set, whatever the tuner saw. Reported: per-seed values, the median and IQR of
each arm's ratio (random without pruning / arm; > 1 means fewer client-rounds), and the
test accuracy of each arm's validation-selected best trial. Study names do not enter
any result (Hyperband brackets follow the trial slot); ``--no-write`` writes nothing
outside a temporary directory.

    nox -s study                                           # writes RESULTS.md + the figure
    python benchmarks/study_comparison.py --seeds 0 --no-write    # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "search_digits.toml"
BASELINE = "random"
ARMS = {  # name -> [study] overrides
    "random": {"sampler": "random", "pruner": "none"},
    "random+HB": {"sampler": "random", "pruner": "hyperband"},
    "TPE": {"sampler": "tpe", "pruner": "none"},
    "TPE+HB": {"sampler": "tpe", "pruner": "hyperband"},
}
DATASETS = {  # name -> experiment overrides (on search_digits.toml's [experiment])
    "digits": {},
    "mnist1d": {"data.dataset": "mnist1d", "data.num_samples": 4000, "data.num_clients": 20,
                "data.partitioner": "dirichlet", "data.alpha": 0.5,
                "federation.fraction_train": 0.5},
}
NOISE = 2.0  # noise multiplier of the DP-noised evaluation (std 2·√2 on the counts)
EVALUATIONS = {  # ablation: how the tuner scores a round
    "exact central": {},
    "federated 20%": {"eval_fraction": 0.2},
    f"federated 20% + DP (z={NOISE:g})": {"eval_fraction": 0.2,
                                          "eval_noise_multiplier": NOISE},
}
ABLATION_ARMS = ("random", "TPE+HB")
ABLATION_DATASET = "mnist1d"


def study_overrides(dataset: str, arm: str, evaluation: str, seed: int, args,
                    out: Path) -> dict:
    experiment = {"experiment.rounds": args.rounds,
                  "experiment.federation.fraction_evaluate": 0.0,
                  **{f"experiment.{k}": v for k, v in DATASETS[dataset].items()}}
    mode = list(EVALUATIONS).index(evaluation)
    directory = out / dataset / arm.replace("+", "_") / f"eval{mode}" / f"seed{seed}"
    return {**ARMS[arm], **EVALUATIONS[evaluation], **experiment, "seed": seed,
            "name": "s", "n_trials": 10_000, "client_round_budget": args.budget,
            "output_dir": str(directory)}


def run_study(job: tuple) -> dict:
    """One study in a worker process; per trial what the analysis needs."""
    import logging

    from search import run_search

    dataset, arm, evaluation, seed, overrides = job
    logging.getLogger("flwr").setLevel(logging.WARNING)
    start = time.perf_counter()
    out = run_search(CONFIG, overrides)
    return collect(job, out, time.perf_counter() - start)


def collect(job: tuple, out: Path, wall: float) -> dict:
    """What the analysis needs from a finished study's directory."""
    import optuna

    dataset, arm, evaluation, seed, _ = job
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    trials = [{"client_rounds": t.user_attrs.get("client_rounds", 0),
               "rounds": t.user_attrs.get("rounds_completed", 0),
               "central_val": t.user_attrs.get("central_val_per_round", [])}
              for t in study.get_trials(deepcopy=False)]
    summary = json.loads((out / "summary.json").read_text())
    privacy = json.loads((out / "privacy.json").read_text())
    best = summary["best"] or {}
    return {"dataset": dataset, "arm": arm, "evaluation": evaluation, "seed": seed,
            "trials": trials, "wall_s": wall, "best_test": best.get("test_accuracy"),
            "best_val": best.get("central_val_accuracy"),
            "epsilon": privacy.get("epsilon_composed")}


def to_target(trials: list[dict], target: float) -> int | None:
    """Client-rounds spent until a round of a trial first reaches ``target``."""
    spent = 0
    for t in trials:
        per_round = t["client_rounds"] / t["rounds"] if t["rounds"] else 0
        for index, accuracy in enumerate(t["central_val"], 1):
            if accuracy >= target:
                return round(spent + index * per_round)
        spent += t["client_rounds"]
    return None


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return (values[0],) * 3 if values else (float("nan"),) * 3
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def analyse(results: list[dict], args, fraction: float) -> dict:
    """Targets, per-seed client-rounds to target, ratios against random in the same mode."""
    targets = {}
    for dataset in DATASETS:
        reached = [max((max(t["central_val"], default=0) for t in r["trials"]), default=0)
                   for r in results if r["dataset"] == dataset]
        targets[dataset] = round(fraction * max(reached), 4)
    by_cell: dict[tuple, dict[int, dict]] = {}
    results = [dict(r) for r in results]
    for r in results:
        r["to_target"] = to_target(r["trials"], targets[r["dataset"]])
        by_cell.setdefault((r["dataset"], r["evaluation"], r["arm"]), {})[r["seed"]] = r
    cells = {}
    for (dataset, evaluation, arm), by_seed in by_cell.items():
        base = by_cell[(dataset, evaluation, BASELINE)]
        # Not reached within the budget: counted as the budget (so a ratio is a bound).
        ratios = {seed: (base[seed]["to_target"] or args.budget) / (r["to_target"] or args.budget)
                  for seed, r in by_seed.items()}
        tests = [r["best_test"] for r in by_seed.values() if r["best_test"] is not None]
        cells[(dataset, evaluation, arm)] = {
            "by_seed": by_seed, "ratios": ratios, "ratio_q": quartiles(list(ratios.values())),
            "test_q": quartiles(tests),
            "reached": sum(r["to_target"] is not None for r in by_seed.values())}
    return {"targets": targets, "cells": cells, "fraction": fraction}


def jobs_for(args, out: Path) -> list[tuple]:
    jobs = [(d, a, "exact central", s) for d in DATASETS for a in ARMS for s in args.seeds]
    if not args.skip_ablation:
        jobs += [(ABLATION_DATASET, a, e, s) for e in list(EVALUATIONS)[1:]
                 for a in ABLATION_ARMS for s in args.seeds]
    return [(*job, study_overrides(*job, args, out)) for job in jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=int, default=2700,
                        help="client-rounds per study (30 full trials of 9 rounds × 10 "
                             "clients: TPE leaves its 10 random start-up trials)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of a full trial")
    parser.add_argument("--target-fractions", type=float, nargs="+", default=[0.97, 0.93],
                        help="targets as fractions of the best validation accuracy reached")
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--reanalyse", action="store_true",
                        help="analyse the studies of the last run again (nothing is run)")
    parser.add_argument("--no-write", action="store_true",
                        help="write nothing (studies go to a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) if args.no_write else ROOT / "benchmarks" / "out" / "study"
        jobs = jobs_for(args, out)
        started = time.perf_counter()
        if args.reanalyse:
            walls = json.loads((out / "comparison.json").read_text())
            total = walls["total_s"]
            results = [collect(job, Path(job[-1]["output_dir"]) / "s", wall)
                       for job, wall in zip(jobs, walls["wall_s"], strict=True)]
        else:
            results = run_all(jobs, args, out)
            total = time.perf_counter() - started
        analyses = [analyse(results, args, f) for f in args.target_fractions]
        if not args.no_write:
            (out / "comparison.json").write_text(json.dumps(
                {"total_s": total, "wall_s": [r["wall_s"] for r in results]}) + "\n")
            plot(results, analyses[0], ROOT / "docs" / "study_comparison.png")
        write(analyses, args, total, write_file=not args.no_write)


def run_all(jobs: list[tuple], args, out: Path) -> list[dict]:
    import shutil

    if not args.no_write:
        shutil.rmtree(out, ignore_errors=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per study process
    results = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for r in pool.map(run_study, jobs):
            results.append(r)
            print(f"== {r['dataset']} {r['arm']} [{r['evaluation']}] seed {r['seed']}: "
                  f"{len(r['trials'])} trials, best val {r['best_val']}, test "
                  f"{r['best_test']} ({r['wall_s']:.0f} s)", flush=True)
    return results


def _cell_line(label: str, cell: dict, budget: int) -> str:
    seeds = sorted(cell["by_seed"])
    per_seed = ", ".join(
        f"{cell['by_seed'][k]['to_target'] or f'>{budget}'}" for k in seeds)
    ratios = ", ".join(f"{cell['ratios'][k]:.2f}" for k in seeds)
    q1, med, q3 = cell["ratio_q"]
    t1, tmed, t3 = cell["test_q"]
    return (f"| {label} | {per_seed} | {ratios} | **{med:.2f}×** [{q1:.2f}, {q3:.2f}] | "
            f"{cell['reached']}/{len(seeds)} | {tmed:.4f} [{t1:.4f}, {t3:.4f}] |")


HEADER = ["| arm | client-rounds to target, per seed | ratio random / arm, per seed | "
          "median ratio [IQR] | seeds reaching target | test acc. of best (median [IQR]) |",
          "|---|---|---|---|---|---|"]


def write(analyses: list[dict], args, total: float, *, write_file: bool) -> None:
    """The RESULTS.md section (printed; written unless ``--no-write``)."""
    lines = [
        "## Federated HPO comparison", "",
        f"`nox -s study` on {dt.date.today()}: {os.cpu_count()} cores, {args.jobs} studies "
        f"at a time, {total / 60:.1f} min in all. Space and experiment: "
        f"`configs/search_digits.toml` ({args.rounds} rounds per full trial, Hyperband "
        f"η = 3), budget {args.budget} client-rounds per study, seeds {args.seeds}. "
        "Target = a fraction of the best validation accuracy any study of the dataset "
        "reached (fixed before arms are compared; two fractions shown). Client-rounds to "
        "target are counted on the exact server-held validation set; `>B` = not reached "
        "within the budget B (the ratio then uses B, so it is a bound). Test accuracy: the "
        "global test set, of the trial each study selected on validation (the same for "
        "every target).", ""]
    for analysis in analyses:
        lines += _tables(analysis, args)
    lines += ["![comparison](../docs/study_comparison.png)", ""]
    text = "\n".join(lines)
    print(text)
    if write_file:
        from benchmarks.results_file import replace_section

        replace_section("## Federated HPO comparison", text)


def _tables(analysis: dict, args) -> list[str]:
    cells, targets, fraction = analysis["cells"], analysis["targets"], analysis["fraction"]
    lines = []
    for dataset in DATASETS:
        lines += [f"### {dataset}, target {fraction} × best = {targets[dataset]:.4f}: "
                  "sampler × pruner (exact centralized validation)", "", *HEADER]
        lines += [_cell_line(arm, cells[(dataset, "exact central", arm)], args.budget)
                  for arm in ARMS if (dataset, "exact central", arm) in cells]
        lines.append("")
    ablation = [(e, a) for e in EVALUATIONS for a in ABLATION_ARMS
                if (ABLATION_DATASET, e, a) in cells]
    if len(ablation) > len(ABLATION_ARMS):
        lines += [f"### {ABLATION_DATASET}, target {targets[ABLATION_DATASET]:.4f}: noisy "
                  "evaluation (Kuo et al. 2023)", "",
                  "What the tuner scores: exact server-held validation, federated "
                  "validation on a seeded 20% of the clients, or that with Gaussian noise "
                  f"(z = {NOISE:g}) on the aggregated counts. Ratio = random / TPE+HB in the "
                  "same mode.", "", *HEADER]
        for evaluation, arm in ablation:
            cell = cells[(ABLATION_DATASET, evaluation, arm)]
            eps = [r["epsilon"] for r in cell["by_seed"].values() if r["epsilon"]]
            label = f"{arm} [{evaluation}]" + (
                f" (search ε median {statistics.median(eps):.2f})" if eps else "")
            lines.append(_cell_line(label, cell, args.budget))
        lines.append("")
    return lines


def plot(results: list[dict], analysis: dict, path: Path) -> None:
    """Best exact validation accuracy so far against client-rounds, per arm and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(ARMS, ("tab:gray", "tab:green", "tab:blue", "tab:red"), strict=True))
    fig, axes = plt.subplots(1, len(DATASETS), figsize=(6 * len(DATASETS), 4.2))
    for ax, dataset in zip(axes, DATASETS, strict=True):
        for r in results:
            if r["dataset"] != dataset or r["evaluation"] != "exact central":
                continue
            xs, ys, spent, best = [0], [0.0], 0.0, 0.0
            for t in r["trials"]:
                per_round = t["client_rounds"] / t["rounds"] if t["rounds"] else 0
                for index, accuracy in enumerate(t["central_val"], 1):
                    best = max(best, accuracy)
                    xs.append(spent + index * per_round)
                    ys.append(best)
                spent += t["client_rounds"]
            ax.step(xs, ys, where="post", color=colors[r["arm"]], alpha=0.6, lw=1,
                    label=r["arm"] if r["seed"] == min(x["seed"] for x in results) else None)
        ax.axhline(analysis["targets"][dataset], ls="--", color="black", lw=0.8,
                   label="target")
        ax.set_xlabel("client-rounds used (all trials, pruned ones included)")
        ax.set_ylabel("best server-held validation accuracy so far")
        ax.set_title(f"{dataset}: sampler × pruner, equal budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
