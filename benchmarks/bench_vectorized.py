"""Vectorized clients (``backend = "vectorized"``) vs the sequential loop and the inline backend.

K small torch clients (MLP 40-64-64-10 on mnist1d, IID, 5 local SGD steps of batch 32,
lr 0.05) train one round from the same global weights:

* **sequential**: the bare loop, client after client on one shared ``TorchTrainer`` (set
  weights, draw the seeded schedule, ``fit``, get weights), as ``bench_runtime``'s bare loop;
* **vectorized**: the same clients' schedules drawn the same way, then one
  :func:`clients.vectorized.fit_clients` call (``torch.func.vmap`` over the clients);
* **inline / vectorized backend**: a whole federated round through Flower's strategy on
  each backend (``sandbox.run``, FedAvg, centralized evaluation, no federated evaluation);
  median steady-state round time.

Each is taken at 1 and 2 torch threads (``runtime.threads_per_client``), median of
``--repeats`` rounds; the ratios are within one run. The crossover K is the smallest K of
the list where the vectorized round beats the sequential loop. Peak memory is the
training's RSS high-water mark above the RSS just before it, in a fresh subprocess per cell
(``/proc/self/clear_refs`` resets the mark; torch's allocator is invisible to tracemalloc).

    python benchmarks/bench_vectorized.py            # K in 1 2 5 10 50 100 200 500, threads 1 2
    python benchmarks/bench_vectorized.py --clients 10 100 --threads 1 --dp

For a results page: ``rows = measure_all(clients, threads, repeats, dp)`` returns one dict
per (K, threads) and ``markdown(rows, dp)`` the table that ``main`` writes to
``benchmarks/out/vectorized.md`` (and the rows to ``benchmarks/out/vectorized.json``);
``--render A.json B.json`` re-renders a table from saved rows (e.g. a rerun of one thread
count, ``--threads 2 --tag _threads2``, beside the others).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sandbox  # noqa: E402
from benchmarks.results_file import machine  # noqa: E402
from clients import framework_threads  # noqa: E402
from clients.app import TrainingJob  # noqa: E402
from clients.schedule import batch_schedule, client_randomness, poisson_schedule  # noqa: E402
from clients.trainer import get_trainer  # noqa: E402
from clients.vectorized import fit_clients  # noqa: E402
from sandbox.core.data import load_federated_data  # noqa: E402
from sandbox.core.privacy import sample_dp_plan  # noqa: E402
from sandbox.core.wire import model_spec_for  # noqa: E402

OUT = Path(__file__).parent / "out"
#: 1, 2 and 5 locate the crossover; 10 ... 500 the regime the backend is for
CLIENTS = [1, 2, 5, 10, 50, 100, 200, 500]


def bench_config(clients: int, *, threads: int = 1, backend: str = "inline", rounds: int = 3,
                 dp: bool = False) -> sandbox.Config:
    private = {"privacy.sample.enabled": True, "privacy.noise": "seeded"} if dp else {}
    return sandbox.load_config(overrides={
        "name": f"bench-vectorized-{clients}", "seed": 0, "framework": "torch",
        "backend": backend, "rounds": rounds,
        "runtime.threads_per_client": threads, "runtime.server_threads": threads,
        "data.dataset": "mnist1d", "data.num_samples": max(4000, 50 * clients),
        "data.num_clients": clients, "data.partitioner": "iid",
        "data.client_validation_fraction": 0.0,
        "model.arch": "mlp", "model.hidden": [64, 64],
        "train.local_steps": 5, "train.batch_size": 32, "train.lr": 0.05,
        "federation.fraction_evaluate": 0.0, "output.progress": False, "output.plot": False,
        "output.checkpoint": False, "output.dir": "/tmp/fedsandbox-bench-vectorized",
        **private,
    })


def _jobs(cfg: sandbox.Config, server_round: int) -> list[TrainingJob]:
    """Every client's round, drawn as the ClientApp draws it (no Flower messages)."""
    data = load_federated_data(cfg.data, cfg.seed)
    spec = model_spec_for(cfg)
    weights = spec.init_weights(cfg.seed)
    jobs = []
    for pid, client in enumerate(data.clients):
        rng, seed = client_randomness(cfg.seed, server_round, pid)
        n = len(client.y_train)
        plan = sample_dp_plan(cfg, n) if cfg.privacy.sample.enabled else None
        schedule = (batch_schedule(n, cfg.train, rng) if plan is None or not plan.poisson
                    else poisson_schedule(n, plan.sample_rate, plan.steps, rng))
        jobs.append(TrainingJob(
            msg=None, partition_id=pid, spec=spec, received=weights, x=client.x_train,
            y=client.y_train, metrics=None, schedule=schedule, seed=seed, dp=plan,
            secure=False, proximal_mu=0.0, control=None, own=None, correction=None,
            malicious=False))
    return jobs


def sequential(cfg: sandbox.Config, jobs: list[TrainingJob]) -> list[list[np.ndarray]]:
    trainer = get_trainer("torch", model_spec_for(cfg), cfg.train,
                          private=cfg.privacy.sample.enabled)
    out = []
    for job in jobs:
        trainer.set_weights(job.received)
        trainer.fit(job.x, job.y, job.schedule, seed=job.seed, dp=job.dp)
        out.append(trainer.get_weights())
    return out


def vectorized(cfg: sandbox.Config, jobs: list[TrainingJob]) -> list[list[np.ndarray]]:
    return [weights for weights, _ in fit_clients(model_spec_for(cfg), cfg.train, jobs)]


def _timed(fn, cfg: sandbox.Config, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` rounds (schedules drawn outside the clock
    for both, as both draw them the same way)."""
    times = []
    for server_round in range(1, repeats + 1):
        jobs = _jobs(cfg, server_round)
        start = time.perf_counter()
        fn(cfg, jobs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def backend_round(clients: int, threads: int, backend: str, dp: bool) -> float:
    """Median steady-state round time of a federated run on ``backend``."""
    result = sandbox.run(bench_config(clients, threads=threads, backend=backend, dp=dp))
    return statistics.median(result.round_seconds[2:] or result.round_seconds[1:])


def peak_memory_mib(mode: str, clients: int, threads: int, dp: bool) -> float:
    """RSS high-water mark of one training round above the RSS before it, in a fresh
    process (MiB)."""
    code = (f"from benchmarks.bench_vectorized import _probe; "
            f"_probe({mode!r}, {clients}, {threads}, {dp})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _probe(mode: str, clients: int, threads: int, dp: bool) -> None:
    cfg = bench_config(clients, threads=threads, dp=dp)
    fn = {"sequential": sequential, "vectorized": vectorized}[mode]
    with framework_threads("torch", threads):
        fn(cfg, _jobs(cfg, 1)[:2])  # imports, kernels and the trainer: not this cost
        jobs = _jobs(cfg, 2)
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        fn(cfg, jobs)
        print((_status_kib("VmHWM") - before) / 1024)


def measure(clients: int, threads: int, repeats: int, dp: bool) -> dict:
    cfg = bench_config(clients, threads=threads, dp=dp)
    with framework_threads("torch", threads):
        sequential(cfg, _jobs(cfg, 1)[:2])  # warm-up
        vectorized(cfg, _jobs(cfg, 1)[:2])
        seq = _timed(sequential, cfg, repeats)
        vec = _timed(vectorized, cfg, repeats)
    row = {"clients": clients, "threads": threads, "dp": dp, "sequential_s": seq,
           "vectorized_s": vec, "speedup": seq / vec,
           "inline_round_s": backend_round(clients, threads, "inline", dp),
           "vectorized_round_s": backend_round(clients, threads, "vectorized", dp),
           "sequential_peak_mib": peak_memory_mib("sequential", clients, threads, dp),
           "vectorized_peak_mib": peak_memory_mib("vectorized", clients, threads, dp)}
    row["round_speedup"] = row["inline_round_s"] / row["vectorized_round_s"]
    return row


def measure_all(clients: list[int], threads: list[int], repeats: int, dp: bool) -> list[dict]:
    rows = []
    for count in threads:
        for k in clients:
            rows.append(measure(k, count, repeats, dp))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def crossover(rows: list[dict], threads: int) -> str:
    """The smallest K from which on the vectorized round beats the sequential loop at
    every larger K of the list."""
    ordered = sorted((r["clients"], r["speedup"]) for r in rows if r["threads"] == threads)
    since = None
    for k, speedup in ordered:
        since = (since or k) if speedup > 1 else None
    return f"K = {since}" if since is not None else "none in the list"


def markdown(rows: list[dict], dp: bool) -> str:
    kind = "DP-SGD (seeded noise)" if dp else "plain SGD"
    lines = [
        f"### Vectorized clients vs sequential ({kind})", "",
        f"Machine: {machine()}; measured under load from other users of the machine "
        "(absolute times vary between runs, ratios are within one run).", "",
        "K clients x 5 local SGD steps (batch 32), MLP 40-64-64-10 on mnist1d. "
        "`sequential`: bare loop of TorchTrainer.fit; `vectorized`: one "
        "clients.vectorized.fit_clients call; `inline` / `vectorized backend`: median "
        "federated round (FedAvg, central evaluation) through Flower; peak: RSS "
        "high-water mark of one round's training above the RSS before it (fresh process). "
        "Where the machine's cores are busy with other work, cells at 2 threads are "
        "dominated by OpenMP threads waiting for a core: repeat them before trusting one.",
        "",
        "| K | threads | sequential s | vectorized s | speed-up | inline round s | "
        "vectorized backend round s | round speed-up | peak MiB seq | peak MiB vec |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['threads']} | {r['sequential_s']:.4f} | "
            f"{r['vectorized_s']:.4f} | {r['speedup']:.1f}x | {r['inline_round_s']:.3f} | "
            f"{r['vectorized_round_s']:.3f} | {r['round_speedup']:.1f}x | "
            f"{r['sequential_peak_mib']:.1f} | {r['vectorized_peak_mib']:.1f} |")
    lines.append("")
    for count in sorted({r["threads"] for r in rows}):
        lines.append(f"Crossover at {count} thread(s): {crossover(rows, count)} "
                     "(from there on vectorized beats sequential at every K of the list).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=CLIENTS)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dp", action="store_true", help="DP-SGD clients (seeded noise)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--render", nargs="+", type=Path, metavar="JSON",
                        help="measure nothing: the table of these files' rows (in order)")
    args = parser.parse_args()
    if args.render:
        rows = [row for path in args.render for row in json.loads(path.read_text())]
    else:
        rows = measure_all(args.clients, args.threads, args.repeats, args.dp)
    text = markdown(rows, args.dp or any(r["dp"] for r in rows))
    print(text)
    if not args.no_write:
        OUT.mkdir(exist_ok=True)
        suffix = ("_dp" if args.dp else "") + args.tag
        (OUT / f"vectorized{suffix}.md").write_text(text)
        (OUT / f"vectorized{suffix}.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
