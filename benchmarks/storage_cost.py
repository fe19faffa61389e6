"""What a study's storage costs per trial: SQLite, the journal file and PostgreSQL.

Two measurements per storage, one after another on the same machine:

1. *tiny study*: ``fedsandbox search`` of one tiny study (quickstart digits, 4 clients,
   MLP 16, 1 round, ``--trials`` TPE trials, one worker) in a fresh process; the per-trial
   overhead is (study wall − the trials' own run walls from their ``run.json``) / trials:
   sampler, storage, heartbeat, claims and report, everything that is not the federated
   run;
2. *storage only*: ``--ops`` Optuna trials with a trivial objective that does what a
   trial does to the storage (ask, 5 user attributes, 3 intermediate reports, tell),
   milliseconds per trial.

PostgreSQL is a throwaway local server (:mod:`tests.postgres`: Debian's ``postgresql``).

    python benchmarks/storage_cost.py                  # 8 trials, 200 storage-only trials

Writes ``benchmarks/out/storage_cost.md``. On a shared machine the numbers are upper
bounds; the load average is in the caption.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_file import machine  # noqa: E402

OUT = ROOT / "benchmarks" / "out"

STUDY = """[study]
name = "tiny"
experiment = "{root}/configs/quickstart.toml"
output_dir = "{out}"
n_trials = {trials}
seed = 0
sampler = "tpe"
pruner = "none"
storage = "{storage}"

[experiment]
rounds = 1
data.num_clients = 4
model.arch = "mlp"
model.hidden = [16]
output.plot = false
output.tensorboard = false
output.progress = false

[space.lr]
type = "float"
low = 0.01
high = 0.5
log = true
key = "train.lr"
"""


def tiny_study(storage: str, trials: int, work: Path) -> dict:
    """Wall of ``fedsandbox search`` on ``storage`` and the per-trial overhead."""
    work.mkdir(parents=True)
    path = work / "tiny.toml"
    path.write_text(STUDY.format(root=ROOT, out=work / "out", trials=trials, storage=storage))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sandbox", "search", str(path)], cwd=ROOT,
                   check=True, capture_output=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    runs = [json.loads(p.read_text())["wall_s"]
            for p in (work / "out").rglob("trials/*/run.json")]
    return {"study_s": wall, "runs": len(runs), "runs_s": sum(runs),
            "overhead_per_trial_s": (wall - sum(runs)) / trials}


def storage_only(url: str, ops: int) -> float:
    """Milliseconds per trial of a trivial objective that writes what a trial writes."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("journal:"):
        storage = JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    else:
        storage = RDBStorage(url, heartbeat_interval=30)
    study = optuna.create_study(study_name="ops", storage=storage,
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        for key in ("slot", "worker", "pid", "run_dir", "accuracy"):
            trial.set_user_attr(key, 1)
        for step in range(3):
            trial.report(x, step)
        return x

    started = time.perf_counter()
    study.optimize(objective, n_trials=ops)
    return 1000 * (time.perf_counter() - started) / ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--ops", type=int, default=200)
    args = parser.parse_args()
    from tests.postgres import postgres_server

    before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="storage-cost-") as tmp, \
            postgres_server() as pg_url:
        tmp = Path(tmp)
        for name, setting, ops_url in (
                ("SQLite", "", f"sqlite:///{tmp / 'ops.db'}"),
                ("Journal file", "journal", f"journal:{tmp / 'ops.journal'}"),
                ("PostgreSQL", pg_url, pg_url)):
            print(f"{name} ...", flush=True)
            study = tiny_study(setting, args.trials, tmp / name.split()[0].lower())
            ms = storage_only(ops_url, args.ops)
            rows.append({"storage": name, **study, "storage_only_ms": ms})
            print(rows[-1], flush=True)
    after = os.getloadavg()[0]
    lines = [
        "# Storage cost of a study", "",
        f"`python benchmarks/storage_cost.py --trials {args.trials} --ops {args.ops}`, "
        f"{dt.date.today()}, {machine()}, **shared with other users' test runs** (load "
        f"average {before:.1f} before, {after:.1f} after): upper bounds.", "",
        f"| storage | tiny study, {args.trials} trials (s) | trials' runs (s) | "
        "overhead per trial (s) | storage only (ms per trial) |",
        "|---|---|---|---|---|"]
    lines += [f"| {r['storage']} | {r['study_s']:.1f} | {r['runs_s']:.1f} | "
              f"{r['overhead_per_trial_s']:.2f} | {r['storage_only_ms']:.1f} |" for r in rows]
    lines += ["", "Overhead per trial = (study wall − the trials' run walls) / trials: "
              "process start, sampler, storage, heartbeat, slot claims and the report. "
              "Storage only = a trivial objective doing a trial's storage writes (ask, 5 "
              "user attributes, 3 reports, tell), random sampler.", ""]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "storage_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
