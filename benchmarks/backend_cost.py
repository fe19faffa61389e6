"""Cost of one config on each backend: start-up and seconds per round, each in a fresh process.

The same small config (quickstart: digits, CNN, Dirichlet(0.5); here 4 clients and 3
rounds, every client trains and evaluates every round) runs once per backend in a new
Python process (``python -c``), so every backend pays its own imports and start-up:

* *per round*: the mean wall time of rounds 1..R from the run's ``timings.json``
  (train, federated evaluation, centralized evaluation); round 1 also asks every node for
  its partition id, so it is reported on its own as well;
* *start-up*: the process's wall time minus the rounds 1..R (imports, data, pre-flight,
  Ray / SuperLink / SuperNodes start and stop, round 0's evaluation of the initial
  model, writing the run directory); round 0's row time is shown on its own too (on
  Ray it includes starting the simulation).

Backends: inline, pool, vectorized (when this checkout has it), ray (a Ray started for
the run), ray-cluster (``ray.address``: a ``ray start --head`` on 127.0.0.1 started before
the run, not counted, and stopped after), deployment (insecure) and deployment over TLS.
The metrics of every backend are compared with inline's (they must be equal).

    python benchmarks/backend_cost.py                       # all, 3 rounds, 4 clients
    python benchmarks/backend_cost.py --backends inline pool --rounds 5

Writes ``benchmarks/out/backend_cost.md`` and ``.json``. Timings on a shared machine are
upper bounds; the load average before and after is in the table's caption.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_file import machine  # noqa: E402
from sandbox.core.config import Backend  # noqa: E402
from sandbox.engine.runtime.superlink import free_port, stop_tree  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
ALL = ["inline", "pool", "vectorized", "ray", "ray-cluster", "deployment", "deployment-tls"]

CHILD = """
import json, sys, time
import sandbox
cfg = sandbox.load_config(sys.argv[1], json.loads(sys.argv[2]))
result = sandbox.run(cfg)
print("RESULT " + json.dumps({"round_s": result.round_seconds, "rows": result.rounds,
                              "wall_s": result.wall_s}))
"""


def overrides(backend: str, args: argparse.Namespace, out: Path) -> dict:
    base = {"rounds": args.rounds, "data.num_clients": args.clients,
            "runtime.threads_per_client": 1, "runtime.server_threads": 1,
            "output.dir": str(out), "output.progress": False, "output.tensorboard": False,
            "output.plot": False}
    if backend.startswith("deployment"):
        return base | {"backend": "deployment", "deployment.tls": backend.endswith("tls")}
    if backend == "ray-cluster":
        return base | {"backend": "ray", "ray.address": args.ray_address}
    return base | {"backend": backend}


def run_one(backend: str, args: argparse.Namespace, out: Path) -> dict:
    """One run of the config on ``backend`` in a fresh process: its timings and rows."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(args.config),
                           json.dumps(overrides(backend, args, out))],
                          cwd=ROOT, capture_output=True, text=True, check=False,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"backend": backend, "error": (proc.stdout + proc.stderr)[-2000:]}
    result = json.loads(line.removeprefix("RESULT "))
    rounds = result["round_s"][1:]
    return {"backend": backend, "process_s": wall, "round_s": result["round_s"],
            "per_round_s": sum(rounds) / len(rounds), "first_round_s": rounds[0],
            "later_rounds_s": sum(rounds[1:]) / max(1, len(rounds) - 1),
            "startup_s": wall - sum(rounds), "rows": result["rows"]}


class RayHead:
    """A ``ray start --head --block`` on 127.0.0.1 and a free port; stopped on exit."""

    def __enter__(self) -> str:
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short socket paths
        self.port = free_port()
        ray = str(Path(sys.executable).with_name("ray"))
        self.head = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={self.port}",
             "--node-ip-address=127.0.0.1", f"--num-cpus={os.cpu_count()}", "--num-gpus=0",
             "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        address = f"127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while subprocess.run([ray, "status", f"--address={address}"], capture_output=True,
                             check=False).returncode != 0:
            if self.head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the Ray head did not come up")
            time.sleep(1.0)
        return address

    def __exit__(self, *exc_info) -> None:
        stop_tree(self.head)
        subprocess.run(["rm", "-rf", str(self.temp)], check=False)


def same_metrics(rows: list[dict], reference: list[dict]) -> bool:
    keys = ("central_val_loss", "central_val_accuracy", "central_test_accuracy")
    return [[r.get(k) for k in keys] for r in rows] == [[r.get(k) for k in keys]
                                                        for r in reference]


def mark_parity(results: list[dict]) -> None:
    """Set each result's ``same_as_inline``: its metrics rows equal inline's (or None)."""
    reference = next((r["rows"] for r in results if r["backend"] == "inline"
                      and "rows" in r), None)
    for r in results:
        if "rows" in r:
            r["same_as_inline"] = (None if reference is None or r["backend"] == "inline"
                                   else same_metrics(r["rows"], reference))


def table(results: list[dict], args: argparse.Namespace, loads: tuple) -> str:
    lines = [
        "# Cost of one config per backend", "",
        f"`python benchmarks/backend_cost.py --rounds {args.rounds} --clients "
        f"{args.clients}`: `{args.config.relative_to(ROOT)}` with {args.clients} clients, "
        f"{args.rounds} rounds, 1 thread per client and for the server, each backend in a "
        f"fresh process. Measured {dt.date.today()} on {machine()}, **shared with other "
        f"users' test runs** (load average {loads[0]:.1f} before, {loads[1]:.1f} after): "
        "upper bounds, compare within this table only.", "",
        "| backend | start-up (s) | of which round 0 (s) | per round (s) | round 1 (s) | "
        "later rounds (s) | metrics = inline |",
        "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['backend']} | failed: "
                         f"{r['error'].strip().splitlines()[-1][:120]} | | | | | |")
            continue
        same = {None: "—", True: "yes", False: "**no**"}[r.get("same_as_inline")]
        lines.append(f"| {r['backend']} | {r['startup_s']:.1f} | {r['round_s'][0]:.2f} | "
                     f"{r['per_round_s']:.2f} | {r['first_round_s']:.2f} | "
                     f"{r['later_rounds_s']:.2f} | {same} |")
    lines += ["", "Start-up = the process's wall time minus rounds 1..R: imports, data, Ray "
              "or SuperLink/SuperNodes start and stop, round 0 (the initial model's "
              "evaluation; on Ray also the simulation's start), results files. Per round = "
              "mean of rounds 1..R; round 1 includes the partition query to every node "
              "(and, on pool, Ray and deployment, the clients' first model and data set-up). "
              "The ray-cluster head is started before the timed process and not counted.",
              ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--backends", nargs="+", default=ALL, choices=ALL)
    args = parser.parse_args()
    args.config = args.config.resolve()
    backends = [b for b in args.backends if b.split("-")[0] in get_args(Backend)]
    results = []
    before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="backend-cost-") as tmp:
        for backend in backends:
            print(f"{backend} ...", flush=True)
            if backend == "ray-cluster":
                with RayHead() as args.ray_address:
                    results.append(run_one(backend, args, Path(tmp) / backend))
            else:
                results.append(run_one(backend, args, Path(tmp) / backend))
            print({k: v for k, v in results[-1].items() if k != "rows"}, flush=True)
    mark_parity(results)
    loads = (before, os.getloadavg()[0])
    text = table(results, args, loads)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "backend_cost.md").write_text(text)
    (OUT / "backend_cost.json").write_text(json.dumps(
        {"rounds": args.rounds, "clients": args.clients, "loads": loads,
         "results": [{k: v for k, v in r.items() if k != "rows"} for r in results]},
        indent=1))
    print(text)


if __name__ == "__main__":
    main()
