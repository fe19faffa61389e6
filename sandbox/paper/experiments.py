"""Report sections built from sweeps: strategies on non-IID data, robustness under attack,
utility vs ε with privacy audits. Every point runs over the sweep's ``seeds``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox.paper import figures
from sandbox.paper.model import Figure, Section, Table, cell, ci, estimate_dict, seeds_note
from sandbox.paper.runs import by_point, expand, numbers_only, points_hash, run_points


def _timings(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    return {"runs": [{**{k: row.get(k) for k in keys}, "seed": row["seed"],
                      "wall_s": row["wall_s"]} for row in rows]}


# --- strategies on non-IID data ------------------------------------------------------

def strategy_points(spec, base: Path) -> list[tuple[str, list]]:
    path = base / spec.config
    return [(name, expand(path, {"federation.strategy": name,
                                 "federation.strategy_args": spec.strategy_args.get(name, {})}))
            for name in spec.strategies]


def strategies_hashes(spec, base: Path) -> dict[str, str]:
    points = [p for _, group in strategy_points(spec, base) for p in group]
    return {spec.config: points_hash(points)}


def strategies(spec, base: Path, work: Path) -> Section:
    rows = []
    for name, points in strategy_points(spec, base):
        rows += run_points(points, work / "runs", {"strategy": name})
    groups = by_point(rows, ["strategy"])
    table, summary, curves_ = [], [], {}
    for (name,), members in groups.items():
        final_val = ci([r["final_val_accuracy"] for r in members])
        final_test = ci([r["final_test_accuracy"] for r in members])
        chosen = ci([r["best_round_test_accuracy"] for r in members])
        table.append([name, str(final_val.n), cell(final_val), cell(final_test), cell(chosen)])
        summary.append({"strategy": name, "final_val_accuracy": estimate_dict(final_val),
                        "final_test_accuracy": estimate_dict(final_test),
                        "best_round_test_accuracy": estimate_dict(chosen)})
        curves_[name] = [r["val_accuracy_per_round"] for r in members]
    figures.curves(curves_, work / "accuracy.png", title="Strategies on non-IID data",
                   ylabel="central validation accuracy")
    note = seeds_note({len(m) for m in groups.values()})
    return Section(
        "strategies", "Strategies on non-IID data",
        text=f"Every strategy runs `{spec.config}` (strategy arguments: "
             f"{spec.strategy_args or 'defaults'}). Final-round accuracies; the last column "
             "is the test accuracy of the round chosen by validation accuracy.",
        tables=[Table(f"Strategies on non-IID data. {note}",
                      ["strategy", "N", "final val accuracy", "final test accuracy",
                       "test accuracy at the best validation round"], table)],
        figures=[Figure("accuracy.png", f"Central validation accuracy per round. {note}")],
        numbers={"runs": numbers_only(rows), "summary": summary},
        timings=_timings(rows, ["strategy"]))


# --- robustness under attack ---------------------------------------------------------

def robustness_hashes(spec, base: Path) -> dict[str, str]:
    return {spec.config: points_hash(expand(base / spec.config))}


def robustness(spec, base: Path, work: Path) -> Section:
    rows = run_points(expand(base / spec.config), work / "runs")
    for row in rows:
        row.setdefault("federation.strategy", None)
    groups = by_point(rows, ["federation.strategy", "attack.fraction"])
    table, summary = [], []
    series: dict[str, list] = {}
    for (strategy, fraction), members in groups.items():
        test = ci([r["final_test_accuracy"] for r in members])
        val = ci([r["final_val_accuracy"] for r in members])
        table.append([str(strategy), f"{fraction:g}", str(test.n), cell(val), cell(test)])
        summary.append({"strategy": strategy, "attack_fraction": fraction,
                        "final_val_accuracy": estimate_dict(val),
                        "final_test_accuracy": estimate_dict(test)})
        series.setdefault(str(strategy), []).append((fraction, test))
    figures.lines(series, work / "robustness.png", title="Robust aggregation under attack",
                  xlabel="fraction of malicious clients", ylabel="final test accuracy")
    note = seeds_note({len(m) for m in groups.values()})
    return Section(
        "robustness", "Robustness under attack",
        text=f"`{spec.config}`: each strategy with a growing fraction of attacking clients.",
        tables=[Table(f"Final accuracy under attack. {note}",
                      ["strategy", "attack fraction", "N", "final val accuracy",
                       "final test accuracy"], table)],
        figures=[Figure("robustness.png", f"Final test accuracy against the fraction of "
                                          f"malicious clients. {note}")],
        numbers={"runs": numbers_only(rows), "summary": summary},
        timings=_timings(rows, ["federation.strategy", "attack.fraction"]))


# --- utility vs ε, sample- and client-level DP, with audits ----------------------------

SEEDED_CAVEAT = ("DP noise is drawn with privacy.noise = \"seeded\" so that a rebuild "
                 "reproduces every number: seeded noise is not a privacy guarantee, so these "
                 "ε are the accountant's values for the mechanism as configured, not upper "
                 "bounds for these particular runs.")


def privacy_hashes(spec, base: Path) -> dict[str, str]:
    return {spec.sample: points_hash(expand(base / spec.sample)),
            spec.client: points_hash(expand(base / spec.client))}


def privacy(spec, base: Path, work: Path) -> Section:
    table, summary, utility, audits, baselines = [], [], {}, {}, {}
    rows_all, counts = [], set()
    for level, file in (("sample-level", spec.sample), ("client-level", spec.client)):
        points = expand(base / file)
        swept = sorted({k for combo, _ in points if not combo.get("baseline")
                        for k in combo if k != "seed"})
        rows = run_points(points, work / "runs", {"level": level})
        rows_all += rows
        for key, members in by_point(rows, ["baseline", *swept]).items():
            counts.add(len(members))
            setting = "no DP" if key[0] else ", ".join(
                f"{k.split('.')[-1]} = {v}" for k, v in zip(swept, key[1:], strict=True))
            test = ci([r["final_test_accuracy"] for r in members])
            entry = {"level": level, "setting": setting,
                     "final_test_accuracy": estimate_dict(test)}
            bound = ci([r["audit_epsilon_lower_bound"] for r in members])
            entry["audit_epsilon_lower_bound"] = estimate_dict(bound)
            if key[0]:  # no DP: the audit's power, with no ε to stay below
                baselines[f"{level}: no DP"] = test
                table.append([level, setting, str(test.n), "∞ (no DP)", cell(bound, 2),
                              cell(test)])
            else:
                eps = ci([r["epsilon"] for r in members])
                entry["epsilon"] = estimate_dict(eps)
                utility.setdefault(level, []).append((eps.mean, test))
                audits.setdefault(level, []).append((eps, bound))
                table.append([level, setting, str(test.n), cell(eps, 2), cell(bound, 2),
                              cell(test)])
            summary.append(entry)
    note = seeds_note(counts)
    figures.lines(utility, work / "utility_privacy.png", title="Utility vs ε",
                  xlabel="ε at δ (accountant; mean over seeds)", ylabel="final test accuracy",
                  xlog=True, baselines=baselines)
    figures.audit(audits, work / "audit.png", title="Canary audit vs accounted ε")
    return Section(
        "privacy", "Utility vs ε, and privacy audits",
        text=f"Sample-level DP-SGD (`{spec.sample}`) and client-level DP-FedAvg "
             f"(`{spec.client}`) at several noise multipliers, each with a run without DP. "
             "The one-run canary audit (Steinke, Nasr & Jagielski 2023) gives an empirical "
             "lower bound on ε at 95 % confidence; it must stay below the accountant's ε. "
             + SEEDED_CAVEAT,
        tables=[Table(f"Utility, accounted ε and the audit's empirical ε lower bound. {note} "
                      + SEEDED_CAVEAT,
                      ["level", "setting", "N", "ε (accountant)", "ε lower bound (audit)",
                       "final test accuracy"], table)],
        figures=[Figure("utility_privacy.png", f"Final test accuracy against ε; dashed: no "
                                               f"DP. {note} {SEEDED_CAVEAT}"),
                 Figure("audit.png", f"Empirical ε lower bound of the canary audit against "
                                     f"the accountant's ε; points below y = x are consistent. "
                                     f"{note} {SEEDED_CAVEAT}")],
        numbers={"runs": numbers_only(rows_all), "summary": summary},
        timings=_timings(rows_all, ["level"]))
