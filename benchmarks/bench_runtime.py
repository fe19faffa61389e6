"""Runtime overhead: bare training loop vs inline Grid vs process pool vs Ray simulation.

All three run the same computation: MLP on mnist1d, IID clients, 5 local SGD steps per
client per round, FedAvg over all clients, centralized evaluation after every round
(no federated evaluation). Data loading and model compilation are warmed up first, so
the timings compare the federated machinery only. Ratios are taken within one run.

    nox -s bench                         # torch, 20 and 200 clients, 5 and 20 rounds,
                                         # at 1 and 2 threads, and the fit t = a + b K
    python benchmarks/bench_runtime.py --threads 2 --clients 20 --rounds 5 --no-write

Each run writes ``benchmarks/out/runtime_<framework>_threads<N>.json`` (read by
``benchmarks/summary.py``) and its section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sandbox  # noqa: E402
from benchmarks.results_file import machine, replace_section  # noqa: E402
from clients import framework_threads  # noqa: E402
from clients.schedule import batch_schedule, client_randomness  # noqa: E402
from clients.trainer import get_trainer  # noqa: E402
from sandbox.core.data import load_federated_data  # noqa: E402
from sandbox.core.wire import model_spec_for  # noqa: E402

OUT = Path(__file__).parent / "out"


def bench_config(framework: str, clients: int, rounds: int, backend: str,
                 threads: int = 1) -> sandbox.Config:
    return sandbox.load_config(overrides={
        "runtime.threads_per_client": threads, "runtime.server_threads": threads,
        "name": f"bench-{clients}", "seed": 0, "framework": framework, "backend": backend,
        "rounds": rounds,
        "data.dataset": "mnist1d", "data.num_samples": max(4000, 50 * clients),
        "data.num_clients": clients, "data.partitioner": "iid",
        "data.client_validation_fraction": 0.0,
        "model.arch": "mlp", "model.hidden": [64, 64],
        "train.local_steps": 5, "train.batch_size": 32, "train.lr": 0.05,
        "federation.fraction_evaluate": 0.0, "output.progress": False,
    })


def bare_loop(cfg: sandbox.Config) -> float:
    """The same computation with no Flower: set weights, train, average, evaluate."""
    data = load_federated_data(cfg.data, cfg.seed)
    spec = model_spec_for(cfg)
    trainer = get_trainer(cfg.framework, spec, cfg.train)
    weights = spec.init_weights(cfg.seed)
    trainer.set_weights(weights)
    trainer.evaluate(data.x_test, data.y_test)
    for server_round in range(1, cfg.rounds + 1):
        updates, sizes = [], []
        for pid, client in enumerate(data.clients):
            trainer.set_weights(weights)
            rng, framework_seed = client_randomness(cfg.seed, server_round, pid)
            schedule = batch_schedule(len(client.y_train), cfg.train, rng)
            trainer.fit(client.x_train, client.y_train, schedule, seed=framework_seed)
            updates.append(trainer.get_weights())
            sizes.append(len(client.y_train))
        total = sum(sizes)
        weights = [sum(u[i] * (n / total) for u, n in zip(updates, sizes, strict=True))
                   for i in range(len(weights))]
        trainer.set_weights(weights)
        _, accuracy = trainer.evaluate(data.x_test, data.y_test)
    return accuracy


class _Final:
    prior_ledger = None

    def round_finished(self, server_round, metrics):
        self.accuracy = metrics["central_test_accuracy"]

    def strategy_started(self, accounted, node_states=None): ...

    def strategy_finished(self, accounted, stopped): ...


def flower_run(cfg: sandbox.Config) -> float:
    from sandbox.engine.runtime import run_federation

    sink = _Final()
    run_federation(cfg, sink)
    return sink.accuracy


def timed(fn, cfg, repeats: int) -> tuple[float, float]:
    times, accuracy = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        accuracy = fn(cfg)
        times.append(time.perf_counter() - start)
    return statistics.median(times), accuracy


def round_cost(fn, framework: str, clients: int, threads: int, repeats: int) -> float:
    """Seconds per round at ``clients`` clients: (time of 6 rounds - time of 1 round) / 5.

    The difference cancels what a run costs once (data, model, the strategy's set-up).
    """
    one = timed(fn, bench_config(framework, clients, 1, "inline", threads), repeats)[0]
    six = timed(fn, bench_config(framework, clients, 6, "inline", threads), repeats)[0]
    return (six - one) / 5


def fit_line(ks: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least squares ``t = a + b K``: (a, b)."""
    b, a = np.polyfit(np.asarray(ks, float), np.asarray(seconds, float), 1)
    return float(a), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="torch", choices=["torch", "keras"])
    parser.add_argument("--threads", type=int, default=1,
                        help="runtime.threads_per_client and server_threads (bare loop too)")
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--rounds", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--fit-clients", type=int, nargs="*", default=[10, 50, 200, 1000],
                        help="K for the fit t_round = a + b K (none: skip the fit)")
    parser.add_argument("--repeats", type=int, default=3, help="bare/inline repeats (median)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--no-pool", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    threads = args.threads

    rows = []
    with framework_threads(args.framework, threads):
        bare_loop(bench_config(args.framework, 10, 1, "inline", threads))  # warm-up
        for clients in args.clients:
            for rounds in args.rounds:
                rows.append(measure(args, clients, rounds))
                print(format_row(rows[-1]), flush=True)
        fit = {}
        if args.fit_clients:
            for name, fn in (("bare", bare_loop), ("inline", flower_run)):
                seconds = [round_cost(fn, args.framework, k, threads, args.repeats)
                           for k in args.fit_clients]
                a, b = fit_line(args.fit_clients, seconds)
                fit[name] = {"K": args.fit_clients, "round_s": seconds, "a_s": a, "b_s": b}
                points = ", ".join(f"{k}: {t:.3f} s"
                                   for k, t in zip(args.fit_clients, seconds, strict=True))
                print(f"t_round {name}: a = {1e3 * a:.2f} ms, b = {1e3 * b:.3f} ms/client "
                      f"({points})", flush=True)
    payload = {"framework": args.framework, "threads": threads, "rows": rows, "fit": fit,
               "date": str(dt.date.today()), "machine": machine()}
    out = OUT / f"runtime_{args.framework}_threads{threads}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.no_write:
        write_results(rows, fit, args)


def measure(args, clients: int, rounds: int) -> dict:
    """bare, inline, pool and ray on one (clients, rounds) point."""
    threads = args.threads
    cfg = bench_config(args.framework, clients, rounds, "inline", threads)
    bare_s, bare_acc = timed(bare_loop, cfg, args.repeats)
    inline_s, inline_acc = timed(flower_run, cfg, args.repeats)
    pool_s = pool_acc = ray_s = ray_acc = float("nan")
    if not args.no_pool:  # workers kept warm between runs: the first run starts them
        pool_cfg = bench_config(args.framework, clients, rounds, "pool", threads)
        flower_run(bench_config(args.framework, clients, 1, "pool", threads))
        pool_s, pool_acc = timed(flower_run, pool_cfg, args.repeats)
    if not args.no_ray:
        ray_cfg = bench_config(args.framework, clients, rounds, "ray", threads)
        ray_s, ray_acc = timed(flower_run, ray_cfg, 1)
    return {"clients": clients, "rounds": rounds, "bare_s": bare_s, "inline_s": inline_s,
            "pool_s": pool_s, "ray_s": ray_s, "inline/bare": inline_s / bare_s,
            "inline/pool": inline_s / pool_s, "ray/inline": ray_s / inline_s,
            "acc": (bare_acc, inline_acc, pool_acc, ray_acc)}


HEADER = ("| clients | rounds | bare s | inline s | pool s | ray s | inline/bare (goal ≤ 1.2) "
          "| pool speed-up over inline (goal ≥ 1.7 at 200) | ray/inline "
          "| final acc bare / inline / pool / ray |")


def format_row(row: dict) -> str:
    acc = " / ".join(f"{a:.3f}" for a in row["acc"])
    return (f"| {row['clients']} | {row['rounds']} | {row['bare_s']:.2f} | "
            f"{row['inline_s']:.2f} | {row['pool_s']:.2f} | {row['ray_s']:.1f} | "
            f"{row['inline/bare']:.2f} | {row['inline/pool']:.2f} | {row['ray/inline']:.1f} | "
            f"{acc} |")


def write_results(rows: list[dict], fit: dict, args) -> None:
    plural = "s" if args.threads > 1 else ""
    lines = [
        f"## Runtime overhead ({args.framework}, {args.threads} thread{plural})", "",
        f"`nox -s bench` on {dt.date.today()}, {machine()}, Python "
        f"{platform.python_version()}, runtime.threads_per_client = server_threads = "
        f"{args.threads} (the bare loop too). MLP [64, 64] on mnist1d, IID, 5 local SGD "
        "steps of batch 32 per client per round, FedAvg over all clients, centralized "
        f"evaluation each round. bare/inline/pool: median of {args.repeats} (pool: "
        "runtime.workers = one per core, started before timing); ray: one run including "
        "Ray start-up.", "",
        HEADER, "|" + "---|" * 10, *[format_row(r) for r in rows], "",
    ]
    if fit:
        lines += [
            "Seconds per round fitted as t_round = a + b·K over K clients (per-round time = "
            "(6 rounds − 1 round) / 5):", "",
            "| runtime | " + " | ".join(f"K = {k}" for k in fit["bare"]["K"])
            + " | a (fixed, ms) | b (per client, ms) |",
            "|---|" + "---|" * (len(fit["bare"]["K"]) + 2),
            *[f"| {name} | " + " | ".join(f"{t:.3f} s" for t in f["round_s"])
              + f" | {1e3 * f['a_s']:.2f} | {1e3 * f['b_s']:.3f} |" for name, f in fit.items()],
            "",
        ]
    replace_section(f"## Runtime overhead ({args.framework}, {args.threads} thread{plural})",
                    "\n".join(lines))


if __name__ == "__main__":
    main()
