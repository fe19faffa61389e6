"""DP-SGD step time vs plain SGD, same model and same batches, per framework.

Each measurement is one client's local training call (``Trainer.fit``) over the same
fixed-size batch schedule: plain SGD, then DP-SGD (torch: Opacus GradSampleModule +
DPOptimizer; Keras: our compiled per-example-clipping step). Models and compiled steps
are warmed up first; times are medians over repeats; ratios are within one run.

    nox -s bench                     # runs this after the runtime benchmark
    python benchmarks/bench_dp.py --steps 100 --repeats 3 --threads 2 --no-write

Writes ``benchmarks/out/dp_threads<N>.json`` (read by ``benchmarks/summary.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_file import machine, replace_section  # noqa: E402
from clients import framework_threads, tensorflow_threads  # noqa: E402
from clients.schedule import batch_schedule  # noqa: E402
from clients.trainer import get_trainer  # noqa: E402
from sandbox.core.config import ModelConfig, TrainConfig  # noqa: E402
from sandbox.core.models import ModelSpec  # noqa: E402
from sandbox.core.privacy import SampleDPPlan  # noqa: E402

OUT = Path(__file__).parent / "out"
MODELS = {
    "MLP [64, 64], input 40": (ModelConfig(arch="mlp", hidden=[64, 64]), (40, 1)),
    "CNN [16, 32] + [64], input 8x8": (ModelConfig(arch="cnn", channels=[16, 32],
                                                   hidden=[64]), (8, 8, 1)),
}


def time_fit(trainer, x, y, schedule, dp, repeats: int) -> float:
    trainer.fit(x, y, schedule, seed=0, dp=dp)  # warm-up (tracing, Opacus hooks)
    times = []
    for repeat in range(repeats):
        start = time.perf_counter()
        trainer.fit(x, y, schedule, seed=repeat, dp=dp)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frameworks", nargs="+", default=["torch", "keras"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and TensorFlow intra-op threads (TF: once per process)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if "keras" in args.frameworks:
        tensorflow_threads(args.threads)
    with framework_threads("torch", args.threads):
        rows = measure(args)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"dp_threads{args.threads}.json").write_text(json.dumps(
        {"threads": args.threads, "steps": args.steps, "batch": args.batch, "rows": rows,
         "date": str(dt.date.today()), "machine": machine()}, indent=2) + "\n")
    if not args.no_write:
        write_results(rows, args)


def measure(args) -> list[dict]:
    train = TrainConfig(batch_size=args.batch, local_steps=args.steps, lr=0.05)
    rows = []
    for label, (model_cfg, shape) in MODELS.items():
        spec = ModelSpec.from_config(model_cfg, shape, 10)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1000, *shape)).astype(np.float32)
        y = rng.integers(0, 10, 1000)
        schedule = batch_schedule(len(y), train, rng)
        plan = SampleDPPlan(1.0, 1.0, args.batch / len(y), args.batch, args.steps, True)
        for framework in args.frameworks:
            plain = get_trainer(framework, spec, train)
            private = get_trainer(framework, spec, train, private=True)
            plain_s = time_fit(plain, x, y, schedule, None, args.repeats)
            dp_s = time_fit(private, x, y, schedule, plan, args.repeats)
            row = {"model": label, "framework": framework,
                   "plain_ms": 1e3 * plain_s / args.steps, "dp_ms": 1e3 * dp_s / args.steps}
            row["ratio"] = row["dp_ms"] / row["plain_ms"]
            rows.append(row)
            print(f"{label} {framework}: plain {row['plain_ms']:.3f} ms/step, "
                  f"DP {row['dp_ms']:.3f} ms/step, ratio {row['ratio']:.2f}", flush=True)
    return rows


GOALS = {"torch": 2.0, "keras": 2.5}


def write_results(rows: list[dict], args) -> None:
    plural = "s" if args.threads > 1 else ""
    marker = f"## DP-SGD step time ({args.threads} thread{plural})"
    lines = [
        marker, "",
        f"`nox -s bench` on {dt.date.today()}, {machine()}, {args.threads} intra-op "
        f"thread{plural} (torch and TensorFlow). One client's `Trainer.fit` over "
        f"{args.steps} steps of batch {args.batch} (same fixed batches for plain and DP), "
        f"median of {args.repeats}; DP-SGD with σ = 1, clip 1. torch: per-example gradients "
        "from one backward pass (`clients/torch_dp.py`: ghost norms for dense layers, "
        "unfolded convolutions) with Opacus' clipping, noise and scaling arithmetic; Keras: "
        "compiled step with layer-wise per-example gradients (ghost norms for dense "
        "layers), clipping and one stateless noise draw.", "",
        "| model | framework | plain ms/step | DP-SGD ms/step | DP / plain | goal |",
        "|---|---|---|---|---|---|",
        *[f"| {r['model']} | {r['framework']} | {r['plain_ms']:.3f} | {r['dp_ms']:.3f} | "
          f"{r['ratio']:.2f} | ≤ {GOALS[r['framework']]} |" for r in rows], "",
    ]
    replace_section(marker, "\n".join(lines))


if __name__ == "__main__":
    main()
