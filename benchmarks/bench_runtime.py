"""Runtime overhead: bare training loop vs inline Flower Grid vs Flower run_simulation (Ray).

All three run the same computation: MLP on mnist1d, IID clients, 5 local SGD steps per
client per round, FedAvg over all clients, centralized evaluation after every round
(no federated evaluation). Data loading and model compilation are warmed up first, so
the timings compare the federated machinery only. Ratios are taken within one run.

    nox -s bench                         # torch, 20 and 200 clients, 5 and 20 rounds
    nox -s bench -- --framework keras --clients 20
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sandbox  # noqa: E402
from benchmarks.results_file import replace_section  # noqa: E402
from clients.schedule import batch_schedule, client_randomness  # noqa: E402
from clients.trainer import get_trainer  # noqa: E402
from sandbox.core.data import load_federated_data  # noqa: E402
from sandbox.core.wire import model_spec_for  # noqa: E402


def bench_config(framework: str, clients: int, rounds: int, backend: str) -> sandbox.Config:
    return sandbox.load_config(overrides={
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="torch", choices=["torch", "keras"])
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--rounds", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--repeats", type=int, default=3, help="bare/inline repeats (median)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    rows = []
    for clients in args.clients:
        for rounds in args.rounds:
            cfg = bench_config(args.framework, clients, rounds, "inline")
            bare_loop(bench_config(args.framework, clients, 1, "inline"))  # warm-up
            bare_s, bare_acc = timed(bare_loop, cfg, args.repeats)
            inline_s, inline_acc = timed(flower_run, cfg, args.repeats)
            ray_s = ray_acc = float("nan")
            if not args.no_ray:
                ray_cfg = bench_config(args.framework, clients, rounds, "ray")
                ray_s, ray_acc = timed(flower_run, ray_cfg, 1)
            row = {"clients": clients, "rounds": rounds, "bare_s": bare_s,
                   "inline_s": inline_s, "ray_s": ray_s, "inline/bare": inline_s / bare_s,
                   "ray/inline": ray_s / inline_s, "ray/bare": ray_s / bare_s,
                   "acc": (bare_acc, inline_acc, ray_acc)}
            row["ray/inline as % of ray/bare"] = 100 * row["ray/inline"] / row["ray/bare"]
            rows.append(row)
            print(format_row(row), flush=True)
    if not args.no_write:
        write_results(rows, args)


HEADER = ("| clients | rounds | bare s | inline s | ray s | inline/bare | ray/inline | "
          "ray/bare | ray/inline as % of ray/bare | final acc bare / inline / ray |")


def format_row(row: dict) -> str:
    acc = " / ".join(f"{a:.3f}" for a in row["acc"])
    return (f"| {row['clients']} | {row['rounds']} | {row['bare_s']:.2f} | "
            f"{row['inline_s']:.2f} | {row['ray_s']:.1f} | {row['inline/bare']:.2f} | "
            f"{row['ray/inline']:.1f} | {row['ray/bare']:.1f} | "
            f"{row['ray/inline as % of ray/bare']:.0f}% | {acc} |")


def write_results(rows: list[dict], args) -> None:
    lines = [
        f"## Runtime overhead ({args.framework})", "",
        f"`nox -s bench` on {dt.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. MLP [64, 64] on mnist1d, IID, 5 local SGD "
        "steps of batch 32 per client per round, FedAvg over all clients, centralized "
        f"evaluation each round. bare/inline: median of {args.repeats}; ray: one run "
        "including Ray start-up.", "",
        HEADER, "|" + "---|" * 10, *[format_row(r) for r in rows], "",
    ]
    replace_section(f"## Runtime overhead ({args.framework})", "\n".join(lines))


if __name__ == "__main__":
    main()
