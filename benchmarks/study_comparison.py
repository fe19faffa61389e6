"""Does pruning pay in federated HPO? A 2×2 design at an equal client-round budget.

``nox -s study`` runs, on digits and on mnist1d (harder: digits saturates), the space and
experiment of ``configs/search_digits.toml`` with

* sampler {random, TPE (Bergstra et al. 2011)} × pruner {none, Hyperband (Li et al.
  2018; ours, brackets by slot)}, every arm with the same client-round budget;
* an ablation on mnist1d after Kuo et al. (MLSys 2023): TPE + Hyperband and random
  search scored on the exact server-held validation set, on the federated validation of
  20% of the clients drawn anew for each trial, and on that federated validation with DP
  noise on the aggregated counts (its ε charged to the study's ledger).

Each seed varies the whole experiment (data split, initial model, client sampling: the
experiment's ``seed``) and the tuner (the study's ``seed``). Per dataset, the *targets*
are validation accuracies fixed before any arm is compared and written with the date into
``benchmarks/study_targets.json``: fractions of the best validation accuracy reached by
the 2×2 studies of that dataset (the ablation does not enter). Client-rounds to target
count every client-round of every trial, training and federated evaluation, pruned trials
included, until a trial first reaches the target on the *exact* server-held validation
set, whatever the tuner saw. A study that never reaches it is *censored* (``>B``): its
ratio is a bound, shown as an interval, and a cell reports how many seeds reached the
target. The raw per-trial outputs are kept in ``benchmarks/study_results.csv`` so that
``--reanalyse`` works on a fresh clone. Study names do not enter any result (Hyperband
brackets follow the trial slot); ``--no-write`` writes nothing outside a temporary
directory.

    nox -s study                                           # writes RESULTS.md + the figure
    python benchmarks/study_comparison.py --reanalyse       # from study_results.csv
    python benchmarks/study_comparison.py --seeds 0 --no-write    # a quick look
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
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
RAW = ROOT / "benchmarks" / "study_results.csv"
TARGETS = ROOT / "benchmarks" / "study_targets.json"
EXACT = "exact central"
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
    EXACT: {},
    "federated 20%": {"eval_fraction": 0.2},
    f"federated 20% + DP (z={NOISE:g})": {"eval_fraction": 0.2,
                                          "eval_noise_multiplier": NOISE},
}
ABLATION_ARMS = ("random", "TPE+HB")
ABLATION_DATASET = "mnist1d"


def study_overrides(dataset: str, arm: str, evaluation: str, seed: int, args,
                    out: Path) -> dict:
    experiment = {"experiment.rounds": args.rounds, "experiment.seed": seed,
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

    logging.getLogger("flwr").setLevel(logging.WARNING)
    start = time.perf_counter()
    out = run_search(CONFIG, job[-1])
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


# -- raw outputs: one CSV row per trial ---------------------------------------------------
RAW_COLUMNS = ["dataset", "arm", "evaluation", "seed", "wall_s", "best_val", "best_test",
               "epsilon", "trial", "client_rounds", "rounds", "central_val"]


def save_raw(results: list[dict], path: Path) -> None:
    """Every study's trials (client-rounds, rounds, validation accuracy per round)."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RAW_COLUMNS)
        for r in results:
            for index, t in enumerate(r["trials"]):
                writer.writerow([r["dataset"], r["arm"], r["evaluation"], r["seed"],
                                 round(r["wall_s"], 1), r["best_val"], r["best_test"],
                                 r["epsilon"], index, t["client_rounds"], t["rounds"],
                                 json.dumps([round(v, 6) for v in t["central_val"]])])


def load_raw(path: Path) -> list[dict]:
    """The studies saved by :func:`save_raw`, in file order."""
    if not path.is_file():
        raise SystemExit(f"--reanalyse needs {path}: run `nox -s study` first")
    studies: dict[tuple, dict] = {}

    def number(text: str) -> float | None:
        return float(text) if text not in ("", "None") else None

    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            key = (row["dataset"], row["arm"], row["evaluation"], int(row["seed"]))
            study = studies.setdefault(key, {
                "dataset": key[0], "arm": key[1], "evaluation": key[2], "seed": key[3],
                "wall_s": float(row["wall_s"]), "best_val": number(row["best_val"]),
                "best_test": number(row["best_test"]), "epsilon": number(row["epsilon"]),
                "trials": []})
            study["trials"].append({"client_rounds": float(row["client_rounds"]),
                                    "rounds": int(row["rounds"]),
                                    "central_val": json.loads(row["central_val"])})
    return list(studies.values())


# -- targets: fixed from the 2×2 studies before any arm is compared -----------------------
def fix_targets(results: list[dict], fractions: list[float]) -> dict:
    """Targets per dataset and fraction from the exact-evaluation 2×2 studies only."""
    targets = {}
    for dataset in DATASETS:
        best = max((max(t["central_val"], default=0.0) for r in results
                    if r["dataset"] == dataset and r["evaluation"] == EXACT
                    for t in r["trials"]), default=0.0)
        targets[dataset] = {str(f): round(f * best, 4) for f in fractions}
    return {"fixed_on": dt.date.today().isoformat(),
            "rule": "fraction × the best server-held validation accuracy reached by any "
                    "trial of the dataset's 2×2 studies (sampler × pruner, exact "
                    "evaluation; all arms pooled, the ablation excluded), computed before "
                    "any arm's client-rounds to target were",
            "targets": targets}


def load_targets(results: list[dict], args) -> dict:
    """The fixed targets; fixed now (and written) only with ``--fix-targets`` or none yet."""
    if TARGETS.is_file() and not args.fix_targets:
        return json.loads(TARGETS.read_text())
    fixed = fix_targets(results, args.target_fractions)
    if not args.no_write:
        TARGETS.write_text(json.dumps(fixed, indent=2) + "\n")
    return fixed


# -- analysis -----------------------------------------------------------------------------
def to_target(trials: list[dict], target: float) -> int | None:
    """Client-rounds spent until a round of a trial first reaches ``target`` (None: never)."""
    spent = 0.0
    for t in trials:
        per_round = t["client_rounds"] / t["rounds"] if t["rounds"] else 0
        for index, accuracy in enumerate(t["central_val"], 1):
            if accuracy >= target:
                return round(spent + index * per_round)
        spent += t["client_rounds"]
    return None


def ratio_interval(base: int | None, arm: int | None, budget: int) -> tuple[float, float]:
    """Bounds of (baseline's client-rounds / arm's); a censored study took more than B."""
    if base is not None and arm is not None:
        return base / arm, base / arm
    if base is None and arm is not None:
        return budget / arm, math.inf
    if base is not None:
        return 0.0, base / budget
    return 0.0, math.inf


def median_interval(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """Bounds of the median: the median of the lower and of the upper bounds."""
    return (statistics.median(lo for lo, _ in intervals),
            statistics.median(hi for _, hi in intervals))


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return (values[0],) * 3 if values else (float("nan"),) * 3
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def analyse(results: list[dict], args, fraction: float, targets: dict) -> dict:
    """Per-seed client-rounds to the fixed target; ratio bounds against random, same mode."""
    target = {d: targets["targets"][d][str(fraction)] for d in DATASETS}
    by_cell: dict[tuple, dict[int, dict]] = {}
    for r in (dict(r) for r in results):
        r["to_target"] = to_target(r["trials"], target[r["dataset"]])
        by_cell.setdefault((r["dataset"], r["evaluation"], r["arm"]), {})[r["seed"]] = r
    cells = {}
    for (dataset, evaluation, arm), by_seed in by_cell.items():
        base = by_cell[(dataset, evaluation, BASELINE)]
        intervals = {seed: ratio_interval(base[seed]["to_target"], r["to_target"],
                                          args.budget) for seed, r in by_seed.items()}
        tests = [r["best_test"] for r in by_seed.values() if r["best_test"] is not None]
        cells[(dataset, evaluation, arm)] = {
            "by_seed": by_seed, "intervals": intervals,
            "median": median_interval(list(intervals.values())), "test_q": quartiles(tests),
            "reached": sum(r["to_target"] is not None for r in by_seed.values())}
    return {"targets": target, "cells": cells, "fraction": fraction,
            "fixed_on": targets["fixed_on"]}


def jobs_for(args, out: Path) -> list[tuple]:
    jobs = [(d, a, EXACT, s) for d in DATASETS for a in ARMS for s in args.seeds]
    if not args.skip_ablation:
        jobs += [(ABLATION_DATASET, a, e, s) for e in list(EVALUATIONS)[1:]
                 for a in ABLATION_ARMS for s in args.seeds]
    return [(*job, study_overrides(*job, args, out)) for job in jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=int, default=2700,
                        help="client-rounds per study, training and evaluation (30 full "
                             "trials of 9 rounds × 10 clients)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of a full trial")
    parser.add_argument("--target-fractions", type=float, nargs="+", default=[0.97, 0.93],
                        help="targets as fractions of the best validation accuracy of the "
                             "2×2 studies (used with --fix-targets or when none are fixed)")
    parser.add_argument("--fix-targets", action="store_true",
                        help="fix the targets anew from this run's 2×2 studies")
    parser.add_argument("--jobs", type=int, default=2, help="studies run at once")
    parser.add_argument("--skip-ablation", action="store_true")
    parser.add_argument("--reanalyse", action="store_true",
                        help=f"analyse {RAW.name} again (nothing is run)")
    parser.add_argument("--no-write", action="store_true",
                        help="write nothing (studies go to a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) if args.no_write else ROOT / "benchmarks" / "out" / "study"
        started = time.perf_counter()
        if args.reanalyse:
            results = load_raw(RAW)
        else:
            results = run_all(jobs_for(args, out), args, out)
            if not args.no_write:
                save_raw(results, RAW)
        total = sum(r["wall_s"] for r in results) / args.jobs if args.reanalyse else \
            time.perf_counter() - started
        targets = load_targets(results, args)  # fixed before any ratio is computed
        fractions = sorted((float(f) for f in next(iter(targets["targets"].values()))),
                           reverse=True)
        analyses = [analyse(results, args, f, targets) for f in fractions]
        if not args.no_write:
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


# -- RESULTS.md ---------------------------------------------------------------------------
def _bound(interval: tuple[float, float]) -> str:
    lo, hi = interval
    if lo == hi:
        return f"{lo:.2f}"
    if math.isinf(hi):
        return "unknown" if lo == 0 else f"≥ {lo:.2f}"
    return f"≤ {hi:.2f}"


def _cell_line(label: str, cell: dict, budget: int, baseline: bool) -> str:
    seeds = sorted(cell["by_seed"])
    per_seed = ", ".join(
        f"{cell['by_seed'][k]['to_target'] or f'>{budget}'}" for k in seeds)
    if baseline:
        ratios, median = "—", "—"
    else:
        ratios = ", ".join(_bound(cell["intervals"][k]) for k in seeds)
        lo, hi = cell["median"]
        median = f"{lo:.2f}×" if lo == hi else (
            f"[{lo:.2f}, {'∞' if math.isinf(hi) else f'{hi:.2f}'}] (censored)")
    t1, tmed, t3 = cell["test_q"]
    return (f"| {label} | {cell['reached']}/{len(seeds)} | {per_seed} | {ratios} | {median} "
            f"| {tmed:.4f} [{t1:.4f}, {t3:.4f}] |")


HEADER = ["| arm | seeds reaching target | client-rounds to target, per seed | "
          "ratio random / arm, per seed | median ratio (bounds if censored) | "
          "test acc. of best (median [IQR]) |",
          "|---|---|---|---|---|---|"]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def write(analyses: list[dict], args, total: float, *, write_file: bool) -> None:
    """The RESULTS.md section (printed; written unless ``--no-write``)."""
    lines = [
        "## Federated HPO comparison", "",
        (f"Reanalysis on {dt.date.today()} of the studies in `benchmarks/study_results.csv` "
         f"(their wall times sum to {total * args.jobs / 60:.1f} study-minutes). "
         if args.reanalyse else
         f"`nox -s study` on {dt.date.today()}: {_cpu()}, {os.cpu_count()} cores, "
         f"{args.jobs} studies at a time, {total / 60:.1f} min in all. ") +
        "Space and experiment: "
        f"`configs/search_digits.toml` ({args.rounds} rounds per full trial, Hyperband "
        f"η = 3), budget {args.budget} client-rounds per study (training and federated "
        f"evaluation), seeds {args.seeds} (each seed sets the experiment's data split, "
        "initial model and client sampling and the tuner's seed). Targets fixed on "
        f"{analyses[0]['fixed_on']} (`benchmarks/study_targets.json`) from the 2×2 studies "
        "alone, before any arm was compared. Client-rounds to target are counted on the "
        "exact server-held validation set; `>B` = not reached within the budget B "
        "(censored): a ratio with a censored study is a bound (≥, ≤, or unknown when "
        "both are censored), and the median is then an interval. Test accuracy: the "
        "global test set, of the trial each study selected on validation (the same for "
        "every target). Raw per-trial outputs: `benchmarks/study_results.csv` "
        "(`--reanalyse`).", ""]
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
        lines += [_cell_line(arm, cells[(dataset, EXACT, arm)], args.budget,
                             arm == BASELINE)
                  for arm in ARMS if (dataset, EXACT, arm) in cells]
        lines.append("")
    ablation = [(e, a) for e in EVALUATIONS for a in ABLATION_ARMS
                if (ABLATION_DATASET, e, a) in cells]
    if len(ablation) > len(ABLATION_ARMS):
        lines += [f"### {ABLATION_DATASET}, target {targets[ABLATION_DATASET]:.4f}: noisy "
                  "evaluation (Kuo et al. 2023)", "",
                  "What the tuner scores: exact server-held validation, federated "
                  "validation on 20% of the clients drawn anew for each trial, or that with "
                  f"Gaussian noise (z = {NOISE:g}) on the aggregated counts. Ratio = "
                  "random / arm in the same mode.", "", *HEADER]
        for evaluation, arm in ablation:
            cell = cells[(ABLATION_DATASET, evaluation, arm)]
            eps = [r["epsilon"] for r in cell["by_seed"].values() if r["epsilon"]]
            label = f"{arm} [{evaluation}]" + (
                f" (search ε median {statistics.median(eps):.2f})" if eps else "")
            lines.append(_cell_line(label, cell, args.budget, arm == BASELINE))
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
            if r["dataset"] != dataset or r["evaluation"] != EXACT:
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
