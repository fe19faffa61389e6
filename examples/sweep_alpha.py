"""Sweep the Dirichlet concentration alpha and plot final accuracy (both frameworks).

    python examples/sweep_alpha.py                 # writes examples/out/alpha_sweep.png
    python examples/sweep_alpha.py --rounds 5 --frameworks torch
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sandbox
from sandbox.engine.plots import plot_sweep

OUT = Path(__file__).parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.3, 1.0, 10.0])
    parser.add_argument("--frameworks", nargs="+", default=["torch", "keras"])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    finals: dict[str, list[float]] = {}
    for framework in args.frameworks:
        finals[framework] = []
        for alpha in args.alphas:
            cfg = sandbox.load_config("configs/quickstart.toml", {
                "framework": framework, "rounds": args.rounds, "data.alpha": alpha,
                "data.min_partition_size": 5, "output.dir": str(OUT / "runs"),
                "output.progress": False,
            })
            result = sandbox.run(cfg)
            finals[framework].append(result.final["central_test_accuracy"])
            print(f"{framework:6s} alpha={alpha:<6g} accuracy={finals[framework][-1]:.3f}")
    plot_sweep(args.alphas, finals, OUT / "alpha_sweep.png", "Dirichlet alpha (log scale)")
    print(f"plot: {OUT / 'alpha_sweep.png'}")


if __name__ == "__main__":
    main()
