"""``report.md``: what a reader of a paper needs from a study, in one page."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.config import Study


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def report_markdown(study: Study, summary: dict, privacy: dict, best) -> str:
    """The study's report as Markdown (best trial, costs, reproduction commands)."""
    settings = study.settings
    lines = [f"# Study `{settings.name}`", "",
             f"Backend **{settings.backend}**, stop reason: {summary['stop_reason'] or '–'}."]
    if "states" in summary:
        lines += ["Trials by state: " + ", ".join(f"{k.lower()} {v}" for k, v in
                                                  summary["states"].items()) + ".",
                  f"Client-rounds used: {summary['client_rounds_total']:g}."]
    else:
        lines.append("Release **best_only**: this report holds the best trial alone; the "
                     "trials' results stay in the private work directory "
                     f"`{study.work_directory}`.")
    lines += ["", f"Selection: the objective is the final validation accuracy, "
              f"{settings.objective_source}. The test accuracy (global test set) is "
              "reported, never used to choose.", ""]
    lines += _best_section(summary, best)
    lines += _privacy_section(privacy)
    lines += ["## Reproduce", "", "The whole study:", "", "```bash", summary["command"],
              "```", ""]
    if best is not None:
        lines += ["The best trial alone (a plain experiment config):", "", "```bash",
                  f"fedsandbox run {study.directory / 'best_config.toml'}", "```", ""]
    if settings.release == "best_only":
        return "\n".join(lines)
    lines += ["## Figures", "", "![history](history.png)", ""]
    if "fANOVA" in summary["importances"]:
        lines += [f"Parameter importances ({summary['importances']}):", "",
                  "![importances](importances.png)", ""]
    else:
        lines += [f"Parameter importances: {summary['importances']}.", ""]
    if len(settings.objectives) > 1:
        lines += ["![pareto](pareto.png)", ""]
    return "\n".join(lines)


def _best_section(summary: dict, best) -> list[str]:
    if best is None:
        return ["## Best trial", "", f"There is no best trial: {summary['no_best']}.", ""]
    info = summary["best"]
    epsilon = _number(info.get("epsilon"))
    if info.get("epsilon") is not None and not info.get("epsilon_upper_bound", True):
        epsilon += " (not an upper bound)"
    rows = [("validation accuracy (objective, what chose it)", info["validation_accuracy"]),
            ("server-held validation accuracy", info["central_val_accuracy"]),
            ("test accuracy (held out)", info["test_accuracy"]),
            ("ε of its run", epsilon),
            ("rounds completed", best.user_attrs.get("rounds_completed")),
            ("client-rounds", best.user_attrs.get("client_rounds"))]
    lines = ["## Best trial", "", f"Trial {info['number']}, parameters:", ""]
    lines += [f"- `{k}` = {v!r}" for k, v in info["params"].items()]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_number(value)} |" for name, value in rows]
    lines += [f"\nε of its run is not an upper bound: {c}." for c in info["epsilon_caveats"]]
    return [*lines, ""]


def _privacy_section(privacy: dict) -> list[str]:
    lines = ["## Privacy cost of the search", ""]
    evaluation = privacy["evaluation"]
    if not privacy.get("dp"):
        return [*lines, "No trial applied a DP mechanism.", "",
                f"Objective: {evaluation.get('privacy', evaluation['objective'])}.", ""]
    if "epsilon_composed" in privacy:
        lines.append(f"Composed over every trial (runs and noised evaluations, accountant "
                     f"{privacy['accountant']}, δ = {privacy['delta']:g}): "
                     f"**ε = {privacy['epsilon_composed']:.3f}** (naive sum "
                     f"{privacy['epsilon_naive_sum']:.3f}).")
    if not privacy["upper_bound"]:
        lines += ["", "**These ε are not upper bounds:**", ""]
        lines += [f"- {caveat}" for caveat in privacy["caveats"]]
        lines.append("")
    if privacy.get("budget"):
        lines.append(f"Budget: ε ≤ {privacy['budget']:g}.")
    if privacy.get("noised_evaluation"):
        noised = privacy["noised_evaluation"]
        lines.append(f"Noised evaluations: {noised['releases']} releases, noise "
                     f"multiplier {noised['noise_multiplier']:g} ({noised['mechanism']}).")
    for key in ("privacy", "noise_source", "exact_values_kept"):
        if key in evaluation:
            lines.append(f"Evaluation {key.replace('_', ' ')}: {evaluation[key]}.")
    stopping = privacy["random_stopping"]
    if stopping.get("applies"):
        lines.append(f"Papernot–Steinke random stopping (K ~ Poisson({stopping['mean_trials']:g}"
                     f"), best trial only released): **ε = {stopping['epsilon']:.3f}** "
                     f"(premises: {stopping['premises']}).")
        if privacy.get("withheld"):
            lines.append(f"Withheld: {privacy['withheld']}.")
    else:
        lines.append(f"Random-stopping bound not reported: {stopping['why']}.")
    return [*lines, ""]
