"""Cost of per-round checkpoints (``output.checkpoint``) on the quickstart experiment.

Runs ``configs/quickstart.toml`` (torch, 20 rounds) with checkpoints on and off,
alternating, ``--repeats`` times each after one warm-up run, and reports the median wall
time of each and their ratio (within this one run of the benchmark).

    nox -s bench                       # also runs this
    python benchmarks/bench_checkpoint.py --repeats 3 --no-write
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sandbox  # noqa: E402
from benchmarks.results_file import replace_section  # noqa: E402

MARKER = "## Round checkpoints"


def one_run(checkpoint: bool, out: Path, framework: str) -> float:
    cfg = sandbox.load_config(Path(__file__).parents[1] / "configs" / "quickstart.toml", {
        "framework": framework, "output.checkpoint": checkpoint, "output.progress": False,
        "output.dir": str(out), "output.plot": False, "output.tensorboard": False})
    started = time.perf_counter()
    sandbox.run(cfg)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--framework", default="torch", choices=["torch", "keras"])
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(True, Path(tmp), args.framework)  # warm-up: imports, data, compilation
        for _ in range(args.repeats):
            for checkpoint in (False, True):
                times[checkpoint].append(one_run(checkpoint, Path(tmp), args.framework))
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"quickstart ({args.framework}, 20 rounds): checkpoints off {off:.2f} s, "
          f"on {on:.2f} s, ratio {on / off:.3f}")
    if not args.no_write:
        replace_section(MARKER, "\n".join([
            MARKER, "",
            f"`python benchmarks/bench_checkpoint.py` ({dt.date.today()}, "
            f"{platform.processor() or platform.machine()}, median of {args.repeats}, "
            f"alternating, after a warm-up run): quickstart, {args.framework}, 20 rounds, "
            "10 clients, CNN.", "",
            "| checkpoints | wall s (median) | runs |", "|---|---|---|",
            f"| off | {off:.2f} | {', '.join(f'{t:.2f}' for t in times[False])} |",
            f"| on | {on:.2f} | {', '.join(f'{t:.2f}' for t in times[True])} |", "",
            f"Ratio on / off: **{on / off:.3f}** (each checkpoint pickles the strategy, "
            "the rows and the node states and renames it into place).", ""]))


if __name__ == "__main__":
    main()
