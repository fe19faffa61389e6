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
             f"Backend **{settings.backend}**, stop reason: {summary['stop_reason'] or '–'}. "
             f"Trials by state: " + ", ".join(f"{k.lower()} {v}"
                                             for k, v in summary["states"].items()) + ".",
             f"Client-rounds used: {summary['client_rounds_total']:g}.", "",
             f"Selection: the objective is the final validation accuracy, "
             f"{settings.objective_source}. The test accuracy (global test set) is "
             "reported, never used to choose.", ""]
    lines += _best_section(study, summary, best)
    lines += _privacy_section(privacy)
    lines += ["## Reproduce", "", "The whole study:", "", "```bash", summary["command"],
              "```", ""]
    if best is not None:
        lines += ["The best trial alone (a plain experiment config):", "", "```bash",
                  f"fedsandbox run {study.directory / 'best_config.toml'}", "```", ""]
    lines += ["## Figures", "", "![history](history.png)", ""]
    if "fANOVA" in summary["importances"]:
        lines += [f"Parameter importances ({summary['importances']}):", "",
                  "![importances](importances.png)", ""]
    else:
        lines += [f"Parameter importances: {summary['importances']}.", ""]
    if len(settings.objectives) > 1:
        lines += ["![pareto](pareto.png)", ""]
    return "\n".join(lines)


def _best_section(study: Study, summary: dict, best) -> list[str]:
    if best is None:
        return ["## Best trial", "", "No trial completed a round: there is no best trial.",
                ""]
    info = summary["best"]
    rows = [("validation accuracy (objective, what chose it)", info["validation_accuracy"]),
            ("server-held validation accuracy", info["central_val_accuracy"]),
            ("test accuracy (held out)", info["test_accuracy"]),
            ("ε of its run", info.get("epsilon")),
            ("rounds completed", best.user_attrs.get("rounds_completed")),
            ("client-rounds", best.user_attrs.get("client_rounds"))]
    lines = ["## Best trial", "", f"Trial {info['number']}, parameters:", ""]
    lines += [f"- `{k}` = {v!r}" for k, v in info["params"].items()]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_number(value)} |" for name, value in rows]
    return [*lines, ""]


def _privacy_section(privacy: dict) -> list[str]:
    lines = ["## Privacy cost of the search", ""]
    if not privacy.get("dp"):
        return [*lines, "No trial applied a DP mechanism.", ""]
    lines.append(f"Composed over every trial (runs and noised evaluations, accountant "
                 f"{privacy['accountant']}, δ = {privacy['delta']:g}): "
                 f"**ε = {privacy['epsilon_composed']:.3f}** (naive sum "
                 f"{privacy['epsilon_naive_sum']:.3f}).")
    if privacy.get("budget"):
        lines.append(f"Budget: ε ≤ {privacy['budget']:g}.")
    if privacy.get("noised_evaluation"):
        noised = privacy["noised_evaluation"]
        lines.append(f"Noised evaluations: {noised['releases']} per-client releases, noise "
                     f"multiplier {noised['noise_multiplier']:g} ({noised['mechanism']}).")
    stopping = privacy["random_stopping"]
    if stopping.get("applies"):
        lines.append(f"Papernot–Steinke random stopping (K ~ Poisson, {stopping['trials_run']} "
                     f"trials): ε = {stopping['epsilon']:.3f}.")
    else:
        lines.append(f"Random-stopping bound not reported: {stopping['why']}.")
    return [*lines, ""]
