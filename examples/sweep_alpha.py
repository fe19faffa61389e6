"""Sweep the Dirichlet concentration alpha and plot final accuracy (both frameworks).

Every point is repeated over ``--seeds`` experiment seeds (data split, initial model,
batches and client sampling all change with the seed): the plot shows the mean and its
95 % confidence band, and the table mean ± CI. With one seed per point, differences
between neighbouring alphas are mostly seed noise.

    python examples/sweep_alpha.py                 # writes examples/out/alpha_sweep.png
    python examples/sweep_alpha.py --rounds 5 --frameworks torch --seeds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sandbox
from sandbox.core.stats import mean_ci
from sandbox.engine.plots import plot_sweep

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.3, 1.0, 10.0])
    parser.add_argument("--frameworks", nargs="+", default=["torch", "keras"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5, help="experiment seeds per point")
    args = parser.parse_args()

    finals: dict[str, list[list[float]]] = {}
    for framework in args.frameworks:
        finals[framework] = []
        for alpha in args.alphas:
            accuracies = []
            for seed in range(args.seeds):
                cfg = sandbox.load_config("configs/quickstart.toml", {
                    "framework": framework, "rounds": args.rounds, "data.alpha": alpha,
                    "seed": seed, "data.min_partition_size": 5,
                    "output.dir": str(OUT / "runs"), "output.progress": False,
                })
                accuracies.append(sandbox.run(cfg).final["central_test_accuracy"])
            finals[framework].append(accuracies)
            print(f"{framework:6s} alpha={alpha:<6g} test accuracy "
                  f"{mean_ci(accuracies).format(3)}")
    plot_sweep(args.alphas, finals, OUT / "alpha_sweep.png", "Dirichlet alpha (log scale)")
    print(f"plot: {OUT / 'alpha_sweep.png'}")


if __name__ == "__main__":
    main()
