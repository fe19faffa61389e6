"""PNG plots of a run: metrics per round and partition label histograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy and loss per round: validation (server-held, federated) and test (dashed)."""
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    series = {
        acc_ax: [("central_val_accuracy", "validation (server)"),
                 ("fed_val_accuracy", "validation (clients)"),
                 ("central_test_accuracy", "test (reported only)")],
        loss_ax: [("central_val_loss", "validation (server)"),
                  ("fed_val_loss", "validation (clients)"),
                  ("central_test_loss", "test (reported only)"),
                  ("train_loss", "client train")],
    }
    for ax, keys in series.items():
        for key, label in keys:
            points = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
            if points:
                style = "--" if key.startswith("central_test") else "-"
                ax.plot(*zip(*points, strict=True), style, marker=".", label=label)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.set_ylabel("accuracy")
    loss_ax.set_ylabel("loss")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_partitions(stats: dict, path: Path, title: str) -> None:
    """Stacked bars: training samples per label for every client."""
    plt = _pyplot()
    hist = np.array([c["label_hist"] for c in stats["clients"]])
    clients = np.arange(len(hist))
    fig, ax = plt.subplots(figsize=(max(6, min(0.25 * len(hist), 30)), 4))
    bottom = np.zeros(len(hist))
    cmap = plt.get_cmap("tab10" if hist.shape[1] <= 10 else "tab20")
    for label in range(hist.shape[1]):
        ax.bar(clients, hist[:, label], bottom=bottom, color=cmap(label % cmap.N),
               label=str(label), width=0.9)
        bottom += hist[:, label]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training samples")
    ax.set_title(title)
    if hist.shape[1] <= 20:
        ax.legend(title="label", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(
    values: list, finals: dict[str, list[list[float]]], path: Path, xlabel: str, *,
    log_x: bool = True,
) -> None:
    """Final test accuracy (fixed configs, nothing chosen) against one swept parameter.

    ``finals[label][i]`` holds the accuracies of ``values[i]``, one per seed: the line is
    their mean and the band its 95 % confidence interval; the title says when there is
    one seed only.
    """
    from sandbox.core.stats import mean_ci

    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    n_seeds = set()
    for label, per_value in finals.items():
        estimates = [mean_ci(accuracies) for accuracies in per_value]
        n_seeds |= {e.n for e in estimates}
        line, = ax.plot(values, [e.mean for e in estimates], marker="o", label=label)
        if any(e.half_width for e in estimates):
            ax.fill_between(values, [e.low for e in estimates], [e.high for e in estimates],
                            color=line.get_color(), alpha=0.2)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy (global test set)")
    ax.set_title(seeds_caption([{"n_seeds": n} for n in n_seeds]), fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_privacy(ledger, accountant: str, path: Path, title: str) -> None:
    """ε(δ) after each round: clients' median with min–max band, and the federation."""
    from sandbox.core.privacy import FEDERATION

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    clients = [s for s in ledger.scopes if s != FEDERATION]
    if clients:
        rounds = sorted({m.round for m in ledger.mechanisms if m.scope != FEDERATION})
        table = np.array([[ledger.epsilon(s, accountant, up_to_round=r) for s in clients]
                          for r in rounds])
        ax.fill_between(rounds, table.min(axis=1), table.max(axis=1), alpha=0.3,
                        label=f"sample-level, {len(clients)} clients (min–max)")
        ax.plot(rounds, np.median(table, axis=1), marker="o", ms=3,
                label="sample-level, median client")
    if FEDERATION in ledger.scopes:
        points = ledger.per_round(FEDERATION, accountant)
        ax.plot([r for r, _ in points], [e for _, e in points], marker="s", ms=3,
                label="client-level (federation)")
    ax.set_xlabel("round")
    ax.set_ylabel(f"ε at δ={ledger.delta:g} ({accountant.upper()})")
    ax.set_title(title if ledger.upper_bound else
                 f"{title}\nnot an upper bound: see privacy.json assumptions",
                 fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_utility_privacy(rows: list[dict], path: Path, title: str) -> None:
    """Final test accuracy against ε, one line per framework; no-DP baselines dashed.

    ``rows`` are a sweep's summary rows (:func:`sandbox.engine.sweep.summarize`): the
    mean over seeds, with a 95 % band when a point has more than one seed. Every point is
    a fixed configuration's final round (nothing chosen), so the held-out test accuracy
    is the right number to show.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    frameworks = sorted({r["framework"] for r in rows})
    colors = dict(zip(frameworks, plt.get_cmap("tab10").colors, strict=False))
    for framework in frameworks:
        points = sorted((r["epsilon"], r["final_test_accuracy"],
                         r.get("final_test_accuracy_ci95") or 0.0) for r in rows
                        if r["framework"] == framework and not r["baseline"])
        if points:
            eps, mean, half = (np.array(column) for column in zip(*points, strict=True))
            ax.plot(eps, mean, marker="o", color=colors[framework], label=f"{framework} (DP)")
            if half.any():
                ax.fill_between(eps, mean - half, mean + half, color=colors[framework],
                                alpha=0.2, label=f"{framework}: 95 % CI over seeds")
        loose = [(r["epsilon"], r["final_test_accuracy"]) for r in rows
                 if r["framework"] == framework and not r["baseline"]
                 and r.get("epsilon_upper_bound") is False]
        if loose:  # hollow markers: this ε is not an upper bound (epsilon_caveats)
            ax.scatter(*zip(*loose, strict=True), s=90, facecolors="none",
                       edgecolors="black", zorder=3, label="ε not an upper bound")
        for r in rows:
            if r["framework"] == framework and r["baseline"]:
                ax.axhline(r["final_test_accuracy"], ls="--", color=colors[framework],
                           label=f"{framework}, no DP")
    ax.set_xscale("log")
    ax.set_xlabel("ε at fixed δ (each run's largest over its privacy scopes)")
    ax.set_ylabel("final test accuracy (global test set)")
    ax.set_title(f"{title}\n{seeds_caption(rows)}", fontsize="medium")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def seeds_caption(rows: list[dict]) -> str:
    """"mean ± 95 % CI over N seeds", or that the figure shows a single seed."""
    counts = sorted({int(r.get("n_seeds", 1)) for r in rows})
    if counts == [1]:
        return "single seed per point: no confidence interval"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"mean ± 95 % CI over {n} seeds"
