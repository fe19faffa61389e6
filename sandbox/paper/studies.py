"""Report section: a multi-objective search's Pareto front and the re-evaluation of its
best configurations over fresh seeds (validation-selected, test reported)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

from sandbox.core.stats import MeanCI
from sandbox.paper import figures
from sandbox.paper.model import Figure, Section, Table, cell, seeds_note

#: trials.csv columns that are measured time or name a run directory (stamped by time).
NOT_NUMBERS = ("duration_s", "run_dir")


def _overrides(work: Path | None) -> dict:
    return {} if work is None else {"study.output_dir": str(work)}


def search_hashes(spec, base: Path) -> dict[str, str]:
    from search.config import Study

    study = Study(base / spec.config)
    settings = study.settings.model_dump(mode="json")
    for where in ("output_dir", "experiment"):  # the experiment counts by its config hash
        settings.pop(where)
    text = json.dumps({"settings": settings, "experiment": study.base.config_hash(),
                       "space": [p.describe() | {"key": p.key} for p in study.space.params],
                       "top_k": spec.top_k, "seeds": spec.seeds}, sort_keys=True, default=str)
    return {spec.config: hashlib.sha256(text.encode()).hexdigest()[:12]}


def search(spec, base: Path, work: Path) -> Section:
    from search import run_search
    from search.reevaluate import reevaluate

    path = base / spec.config
    report = run_search(path, _overrides(work))
    trials = _trials(report / "trials.csv")
    shown = []
    if (report / "pareto.png").is_file():
        shutil.copyfile(report / "pareto.png", work / "pareto.png")
        shown.append(Figure("pareto.png", "Every trial of the search (one run each, the "
                            "experiment's own seed: single seed per point, no confidence "
                            "interval) and the Pareto front over validation accuracy, ε "
                            "and client compute. Selection uses validation accuracy only."))
    out = reevaluate(path, top_k=spec.top_k, seeds=spec.seeds, overrides=_overrides(work),
                     out_dir=work / "reevaluation")
    ranked = json.loads((out / "reevaluation.json").read_text())
    note = seeds_note({row["n"] for row in ranked})
    table, bars = [], {}
    for row in ranked:
        val = MeanCI(row["val_accuracy"], row["val_accuracy_ci95"], row["n"])
        test = MeanCI(row["test_accuracy"], row["test_accuracy_ci95"], row["n"])
        eps = "–" if row["epsilon"] is None else f"{row['epsilon']:.3g}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row["params"].items())
        table.append([str(row["rank"]), str(row["trial"]), f"{row['search_val_accuracy']:.3f}",
                      str(row["n"]), cell(val), cell(test), eps, params])
        bars[f"#{row['rank']} (trial {row['trial']})"] = test
    figures.bars(bars, work / "reevaluation.png", title="Top configurations, re-evaluated",
                 ylabel="test accuracy")
    shown.append(Figure("reevaluation.png", "Test accuracy of the top configurations (chosen "
                        "and ranked by validation accuracy) rerun over fresh experiment seeds. "
                        + note))
    summary = json.loads((report / "summary.json").read_text())
    return Section(
        "search", "Search: Pareto front and re-evaluation",
        text=f"`{spec.config}`: {len(trials)} trials, objectives "
             f"{summary['settings']['objectives']}. The top {spec.top_k} configurations by "
             f"validation accuracy rerun over the {spec.seeds} seeds after the search's own "
             "(search/reevaluate.py): the search's score of a winner is optimistic, the "
             "rerun is not; test accuracy is reported, never used to choose.",
        tables=[Table("Top configurations by validation accuracy, rerun over fresh seeds. "
                      + note, ["rank", "trial", "search val (1 seed)", "N", "val accuracy",
                               "test accuracy", "ε (max)", "parameters"], table)],
        figures=shown,
        numbers={"trials": trials, "reevaluation": ranked, "best": summary.get("best")
                 and {k: v for k, v in summary["best"].items() if k != "run_dir"}},
        timings={"trial_seconds": _durations(report / "trials.csv")})


def _trials(path: Path) -> list[dict]:
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k not in NOT_NUMBERS}
                for row in csv.DictReader(handle)]


def _durations(path: Path) -> list:
    with path.open() as handle:
        return [row.get("duration_s") for row in csv.DictReader(handle)]
