"""Wall time of the quickstart as a user sees it: ``fedsandbox run``, imports included.

Runs ``fedsandbox run configs/quickstart.toml`` in a fresh interpreter per framework (what
``nox -s quickstart`` does, without nox) with the given thread count, and records the wall
time from process start to exit, the run's own ``wall_s`` (``run.json``: from the start of
the federation) and its final validation/test accuracy.

    python benchmarks/bench_quickstart.py --threads 1

Writes ``benchmarks/out/quickstart_threads<N>.json`` (read by ``benchmarks/summary.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.results_file import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"


def one(framework: str, threads: int, out_dir: Path) -> dict:
    command = [sys.executable, "-m", "sandbox", "run", "configs/quickstart.toml",
               "--set", f"framework={framework}", "--set", f"output.dir={out_dir}",
               "--set", "output.progress=false",
               "--set", f"runtime.threads_per_client={threads}",
               "--set", f"runtime.server_threads={threads}"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    run = json.loads(next(out_dir.glob("quickstart-*/run.json")).read_text())
    final = run["final"]
    return {"framework": framework, "threads": threads, "process_s": wall,
            "run_wall_s": run["wall_s"], "final_val_accuracy": final.get("central_val_accuracy"),
            "final_test_accuracy": final.get("central_test_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frameworks", nargs="+", default=["torch", "keras"])
    args = parser.parse_args()
    rows = []
    for framework in args.frameworks:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(one(framework, args.threads, Path(tmp)))
        print(rows[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"quickstart_threads{args.threads}.json").write_text(json.dumps(
        {"rows": rows, "date": str(dt.date.today()), "machine": machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
