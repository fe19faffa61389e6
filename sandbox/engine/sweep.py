"""Grid sweeps over config keys: ``fedsandbox sweep CONFIG``.

A sweep file is an experiment config plus a ``[sweep]`` table mapping dotted keys to
lists of values; every combination is one run. All combinations are validated before the
first run starts. Results go to ``<output.dir>/<name>-<stamp>/`` (written as
``.partial`` until complete):

    sweep.csv / sweep.json   one row per run: swept values, seed, final validation and
                             test accuracy, the best round chosen by validation accuracy
                             with its validation and test accuracy, ε, whether that ε is
                             an upper bound (``epsilon_upper_bound``) and why not
                             (``epsilon_caveats``, e.g. ``privacy.noise = 'seeded'``)
    summary.csv / .json / .md  one row per sweep point (the runs that differ only in
                             their seed): mean and 95 % confidence half-width of each
                             accuracy over the seeds, and N (:mod:`sandbox.core.stats`)
    utility_privacy.png      final test accuracy against ε, one line per framework with
                             its 95 % band over seeds (when the sweep varies a DP setting)
    runs/                    every run's own results directory

Keys in ``[sweep]`` besides value lists: ``baseline = true`` adds one run without DP
per framework (drawn as a dashed line on the utility–privacy plot); ``seeds = N`` (the
config's seed and the N − 1 following ones) or ``seeds = [s1, s2, ...]`` repeats every
point once per experiment seed, which varies the data split, initial model, batches and
client sampling.
"""

from __future__ import annotations

import copy
import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

from sandbox.core.config import Config, check_safe_name
from sandbox.core.errors import ConfigError, SandboxError
from sandbox.core.results import RunResult, best_row
from sandbox.core.stats import mean_ci
from sandbox.core.tomlio import read_toml, set_dotted
from sandbox.engine import interrupt
from sandbox.engine.api import run
from sandbox.engine.preflight import preflight, validate_config
from sandbox.engine.rundir import reserve_directory


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None
               ) -> tuple[str, list[tuple[dict[str, Any], Config]]]:
    """Expand a sweep file into validated ``(swept values, Config)`` pairs."""
    file = Path(path)
    raw = read_toml(file, "sweep")
    grid = raw.pop("sweep", None)
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{file}: a sweep needs a [sweep] table of key = [values, ...]")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    baseline = grid.pop("baseline", False)
    seeds = sweep_seeds(grid.pop("seeds", None), raw.get("seed", 0), file,
                        seed_swept="seed" in grid)
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
    if bad:
        raise ConfigError(f"{file}: [sweep] values must be non-empty lists; not for {bad}")
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if baseline:
        frameworks = grid.get("framework", [raw.get("framework", "torch")])
        combos += [{"framework": fw, "baseline": True} for fw in frameworks]
    if seeds is not None:
        combos = [{**combo, "seed": seed} for combo in combos for seed in seeds]
    runs = []
    for combo in combos:
        run_raw = copy.deepcopy(raw)
        for key, value in combo.items():
            if key != "baseline":
                set_dotted(run_raw, key, value)
        if combo.get("baseline"):
            run_raw.setdefault("privacy", {})
            run_raw["privacy"]["sample"] = {"enabled": False}
            run_raw["privacy"]["client"] = {"mode": "off"}
            run_raw["privacy"].pop("budget_epsilon", None)
        label = ", ".join(f"{k}={v}" for k, v in combo.items())
        runs.append((combo, validate_config(run_raw, source=f"{file} [{label}]")))
    name = str(raw.get("name", file.stem))
    try:
        check_safe_name("name" if "name" in raw else f"the sweep name (file {file.name})", name)
    except ValueError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    return name, runs


def sweep_seeds(value: Any, base: Any, file: Path, *, seed_swept: bool) -> list[int] | None:
    """The experiment seeds of ``[sweep] seeds`` (``None`` when the key is absent)."""
    if value is None:
        return None
    where = f"{file}: [sweep] seeds = {value!r}"
    if seed_swept:
        raise ConfigError(f"{where}: the sweep also lists 'seed'; use one of the two")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 1000:
        start = base if isinstance(base, int) and not isinstance(base, bool) else 0
        seeds = [start + i for i in range(value)]
    elif isinstance(value, list) and value and all(
            isinstance(s, int) and not isinstance(s, bool) for s in value):
        seeds = list(value)
    else:
        raise ConfigError(f"{where}: allowed: a count 1..1000 (the config's seed and the "
                          "following ones) or a non-empty list of integer seeds")
    if len(set(seeds)) != len(seeds) or not all(0 <= s < 2**31 for s in seeds):
        raise ConfigError(f"{where}: seeds must be distinct and in 0 ≤ seed < 2³¹")
    return seeds


def run_sweep(path: str | Path, overrides: dict[str, Any] | None = None,
              *, quiet: bool = False) -> Path:
    """Run every combination; return the sweep's results directory.

    Every combination passes the pre-flight check (data, model, DP calibration) before
    the first run starts, so a bad combination fails the sweep before it writes anything.
    """
    name, runs = load_sweep(path, overrides)
    for combo, cfg in runs:
        try:
            preflight(cfg)
        except SandboxError as exc:
            raise type(exc)(f"sweep combination {_describe(combo)}: {exc}",
                            problems=exc.problems) from None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work, final_dir = reserve_directory(Path(runs[0][1].output.dir), f"{name}-{stamp}")
    rows = []
    try:
        for index, (combo, cfg) in enumerate(runs, 1):
            interrupt.check()  # a signal after a run: stop before the next one
            cfg = cfg.model_copy(update={"output": cfg.output.model_copy(
                update={"dir": str(work / "runs"), "progress": not quiet})})
            result = run(cfg)
            rows.append(_row(combo, cfg, result))
            eps = "no DP" if result.epsilon is None else f"{result.epsilon:.3g}" + (
                "" if result.epsilon_upper_bound else " (not an upper bound)")
            print(f"[{index}/{len(runs)}] {_describe(combo)}: val accuracy "
                  f"{rows[-1]['final_val_accuracy']:.3f}, test accuracy "
                  f"{rows[-1]['final_test_accuracy']:.3f}, ε {eps}", flush=True)
        _write(work, rows, name)
    except BaseException as exc:
        suffix = ".interrupted" if isinstance(exc, KeyboardInterrupt) else ".failed"
        failed = final_dir.with_name(final_dir.name + suffix)
        work.rename(failed)
        if isinstance(exc, KeyboardInterrupt):
            exc.run_dir = failed
        raise
    work.rename(final_dir)
    return final_dir


def _describe(combo: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in combo.items())


def _row(combo: dict[str, Any], cfg: Config, result: RunResult) -> dict[str, Any]:
    best = best_row(result.rounds) or result.rounds[-1]
    return {
        **{k: v for k, v in combo.items()},
        "swept": sorted(combo),
        "seed": cfg.seed,
        "framework": cfg.framework,
        "baseline": bool(combo.get("baseline", False)),
        # Validation chooses (best round), test is reported beside it.
        "final_val_accuracy": result.final["central_val_accuracy"],
        "final_test_accuracy": result.final["central_test_accuracy"],
        "best_round": best["round"],
        "best_round_val_accuracy": best["central_val_accuracy"],
        "best_round_test_accuracy": best["central_test_accuracy"],
        "epsilon": result.epsilon,
        "epsilon_upper_bound": None if result.epsilon is None else result.epsilon_upper_bound,
        "epsilon_caveats": "; ".join(result.epsilon_caveats),
        "stop_reason": result.stop_reason.value,
        "rounds_completed": result.rounds[-1]["round"],
        "wall_s": result.wall_s,
        "run_dir": str(result.run_dir.name),
    }


#: Per-run accuracies that the summary averages over seeds.
SUMMARY_METRICS = ("final_val_accuracy", "final_test_accuracy",
                   "best_round_val_accuracy", "best_round_test_accuracy")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per sweep point (runs equal but for ``seed``): mean, 95 % CI, N.

    ``<metric>`` is the mean over the point's seeds, ``<metric>_ci95`` the half-width of
    its 95 % Student-t interval (``None`` for one seed); ε is the largest of the point's
    runs and an upper bound only if every run's is.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = json.dumps({k: v for k, v in row.items()
                          if k in row["swept"] and k != "seed"}, sort_keys=True, default=str)
        groups.setdefault(key, []).append(row)
    summary = []
    for members in groups.values():
        first = members[0]
        point = {k: first[k] for k in first["swept"] if k != "seed"}
        point |= {"framework": first["framework"], "baseline": first["baseline"],
                  "n_seeds": len(members), "seeds": [r["seed"] for r in members]}
        for metric in SUMMARY_METRICS:
            estimate = mean_ci([r[metric] for r in members])
            point[metric], point[f"{metric}_ci95"] = estimate.mean, estimate.half_width
        epsilons = [r["epsilon"] for r in members if r["epsilon"] is not None]
        point["epsilon"] = max(epsilons) if epsilons else None
        point["epsilon_upper_bound"] = (None if not epsilons else
                                        all(r["epsilon_upper_bound"] for r in members))
        summary.append(point)
    return summary


def _summary_markdown(summary: list[dict[str, Any]]) -> str:
    keys = [k for k in summary[0] if k not in ("seeds", "n_seeds", "epsilon_upper_bound")
            and k not in SUMMARY_METRICS and not k.endswith("_ci95")]
    header = keys + ["N", *SUMMARY_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point in summary:
        cells = [f"{point[k]:.3g}" if k == "epsilon" and point[k] is not None
                 else str(point[k]) for k in keys] + [str(point["n_seeds"])]
        for metric in SUMMARY_METRICS:
            half = point[f"{metric}_ci95"]
            cells.append(f"{point[metric]:.4f}" + ("" if half is None else f" ± {half:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return ("Mean ± 95 % CI half-width over N experiment seeds (no interval for N = 1).\n\n"
            + "\n".join(lines) + "\n")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _write(work: Path, rows: list[dict[str, Any]], name: str) -> None:
    from sandbox.engine.plots import plot_utility_privacy

    summary = summarize(rows)
    rows = [{k: v for k, v in row.items() if k != "swept"} for row in rows]
    (work / "sweep.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    _write_csv(work / "sweep.csv", rows)
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _write_csv(work / "summary.csv", summary)
    (work / "summary.md").write_text(_summary_markdown(summary))
    if any(r["epsilon"] is not None for r in summary):
        plot_utility_privacy(summary, work / "utility_privacy.png", f"{name}: utility vs privacy")
