"""Compare the sandbox's federation with its TFF twin: metrics, weights, ε, one figure.

Writes into the twin directory::

    comparison.json   per round: both sides' centralized accuracy and loss, their
                      differences, max |Δw| (and per layer); a summary with the
                      tolerances; under client-level DP both sides' ε
    comparison.csv    the per-round table
    comparison.png    accuracy and loss curves of both sides, max |Δw| per round
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

#: Weights agree when every coordinate differs by at most this (float32 arithmetic).
WEIGHT_TOLERANCE = 1e-4
#: Curves agree when accuracies differ by at most this many points (percent).
ACCURACY_TOLERANCE_POINTS = 0.5
_METRICS = ("central_val_accuracy", "central_val_loss", "central_test_accuracy",
            "central_test_loss")


def load_round_weights(path: Path) -> dict[int, dict[str, np.ndarray]]:
    """``round{r}.{name}`` arrays of a ``weights_per_round.npz`` -> ``{r: {name: array}}``."""
    rounds: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            head, _, name = key.partition(".")
            rounds.setdefault(int(head.removeprefix("round")), {})[name] = archive[key]
    return rounds


def compare_runs(ours: list[dict], theirs: list[dict],
                 our_weights: dict[int, dict[str, np.ndarray]] | None,
                 their_weights: dict[int, dict[str, np.ndarray]] | None) -> dict:
    """Per-round differences of two runs' rows (and weights, when both have them)."""
    by_round = {row["round"]: row for row in theirs}
    table = []
    for row in ours:
        other = by_round.get(row["round"])
        if other is None:
            continue
        entry = {"round": row["round"]}
        for key in _METRICS:
            entry[f"sandbox_{key}"], entry[f"tff_{key}"] = row[key], other[key]
        entry["delta_val_accuracy_points"] = 100 * (row["central_val_accuracy"]
                                                    - other["central_val_accuracy"])
        entry["delta_test_accuracy_points"] = 100 * (row["central_test_accuracy"]
                                                     - other["central_test_accuracy"])
        if our_weights is not None and their_weights is not None:
            layers = {name: float(np.max(np.abs(array - their_weights[row["round"]][name])))
                      for name, array in our_weights[row["round"]].items()}
            entry["max_abs_dw"] = max(layers.values())
            entry["max_abs_dw_per_layer"] = layers
        table.append(entry)
    return {"rounds": table, "summary": _summary(table)}


def _summary(table: list[dict]) -> dict:
    last = table[-1]
    accuracy_gap = max(abs(e[f"delta_{s}_accuracy_points"]) for e in table for s in ("val", "test"))
    summary = {
        "rounds_compared": len(table) - 1,
        "final_sandbox_test_accuracy": last["sandbox_central_test_accuracy"],
        "final_tff_test_accuracy": last["tff_central_test_accuracy"],
        "final_delta_test_accuracy_points": last["delta_test_accuracy_points"],
        "max_abs_delta_accuracy_points": accuracy_gap,
        "accuracy_tolerance_points": ACCURACY_TOLERANCE_POINTS,
        "curves_agree": accuracy_gap <= ACCURACY_TOLERANCE_POINTS,
    }
    if "max_abs_dw" in last:
        worst = max(e["max_abs_dw"] for e in table)
        summary |= {"max_abs_dw": worst, "weight_tolerance": WEIGHT_TOLERANCE,
                    "weights_agree": worst <= WEIGHT_TOLERANCE}
    return summary


def write_comparison(twin_dir: Path, comparison: dict, title: str) -> None:
    (twin_dir / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    columns = [key for key in comparison["rounds"][0] if key != "max_abs_dw_per_layer"]
    with (twin_dir / "comparison.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(comparison["rounds"])
    plot_comparison(comparison["rounds"], twin_dir / "comparison.png", title)


def plot_comparison(table: list[dict], path: Path, title: str) -> None:
    """Accuracy and loss of both sides per round (test dashed), and max |Δw| per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = "max_abs_dw" in table[0]
    fig, axes = plt.subplots(1, 3 if weights else 2, figsize=(15 if weights else 10, 4))
    rounds = [e["round"] for e in table]
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=False):
        for side, marker in (("sandbox", "o"), ("tff", "x")):
            for split, style in (("val", "-"), ("test", "--")):
                values = [e[f"{side}_central_{split}_{metric}"] for e in table]
                ax.plot(rounds, values, style, marker=marker, fillstyle="none",
                        label=f"{side} {split}")
        ax.set_xlabel("round")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if weights:
        gaps = [max(e["max_abs_dw"], 1e-12) for e in table]  # log axis: show 0 as 1e-12
        axes[2].semilogy(rounds, gaps, marker=".")
        axes[2].axhline(WEIGHT_TOLERANCE, color="grey", linestyle=":", label="tolerance")
        axes[2].set_xlabel("round")
        axes[2].set_ylabel("max |Δw| (sandbox − TFF)")
        axes[2].grid(alpha=0.3)
        axes[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
