"""The report's figures: every line is a mean over seeds with its 95 % band (or error bar).

Points with one seed are drawn without a band; the caption says so (:func:`seeds_note`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sandbox.core.stats import MeanCI, mean_ci


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    # No creation date or software version in the file: a rebuild writes the same bytes.
    fig.savefig(path, dpi=100, metadata={"Software": None})
    _pyplot().close(fig)


def _band(ax, x, estimates: list[MeanCI], label: str, **style) -> str:
    """Plot the means and their 95 % band; the line's color."""
    mean = np.array([e.mean for e in estimates])
    half = np.array([e.half_width or 0.0 for e in estimates])
    line, = ax.plot(x, mean, label=label, **style)
    if half.any():
        ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    return line.get_color()


def curves(groups: dict[str, list[list[float]]], path: Path, *, title: str,
           ylabel: str) -> None:
    """Per-round curves: one line per group, mean over its seeds with a 95 % band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, runs in groups.items():
        length = min(len(r) for r in runs)
        estimates = [mean_ci([r[i] for r in runs]) for i in range(length)]
        _band(ax, np.arange(length), estimates, label)
    ax.set(title=title, xlabel="round", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def lines(series: dict[str, list[tuple[float, MeanCI]]], path: Path, *, title: str,
          xlabel: str, ylabel: str, xlog: bool = False,
          baselines: dict[str, MeanCI] | None = None) -> None:
    """y (mean, 95 % band) against x, one line per series; baselines dashed, with band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colors = {}
    for label, points in series.items():
        points = sorted(points, key=lambda p: p[0])
        colors[label] = _band(ax, [p[0] for p in points], [p[1] for p in points], label,
                              marker="o")
    for label, estimate in (baselines or {}).items():  # "<series>: no DP" in its color
        color = colors.get(label.split(":")[0], "gray")
        ax.axhline(estimate.mean, ls="--", color=color, label=label)
        if estimate.half_width:
            ax.axhspan(estimate.low, estimate.high, color=color, alpha=0.1)
    if xlog:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    _save(fig, path)


def audit(points: dict[str, list[tuple[MeanCI, MeanCI]]], path: Path, *, title: str) -> None:
    """Empirical ε lower bound (mean, 95 % CI) against the accountant's ε, y = x drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    top = 0.0
    for label, pairs in points.items():
        pairs = sorted(pairs, key=lambda p: p[0].mean)
        x = [p[0].mean for p in pairs]
        y = [p[1].mean for p in pairs]
        yerr = [p[1].half_width or 0.0 for p in pairs]
        xerr = [p[0].half_width or 0.0 for p in pairs]
        ax.errorbar(x, y, yerr=yerr, xerr=xerr, marker="o", capsize=3, label=label)
        top = max(top, *x, *(a + b for a, b in zip(y, yerr, strict=True)))
    ax.plot([0, top], [0, top], ls=":", color="black", label="lower bound = ε (y = x)")
    ax.set(title=title, xlabel="accounted ε (upper bound, if noise were secure)",
           ylabel="empirical ε lower bound (canary audit)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def bars(values: dict[str, MeanCI], path: Path, *, title: str, ylabel: str) -> None:
    """One bar per label: mean with its 95 % CI as error bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = list(values)
    ax.bar(labels, [values[k].mean for k in labels],
           yerr=[values[k].half_width or 0.0 for k in labels], capsize=4, color="tab:blue",
           alpha=0.8)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.tick_params(axis="x", labelsize="small")
    _save(fig, path)
