"""SIGINT/SIGTERM stop a run at a round boundary and keep its results; safe run dirs; ls."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from sandbox.engine.listing import list_results
from sandbox.engine.rundir import reserve_directory
from tests.conftest import ROOT


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_after_the_round_and_keeps_everything(tmp_path, signum, code):
    out = tmp_path / "results"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "run", str(ROOT / "configs" / "quickstart.toml"),
         "--quiet", "--set", "rounds=500", "--set", "model.arch=mlp",
         "--set", "data.num_clients=3", "--set", f"output.dir={out}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.partial/config.toml")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # a few rounds in
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr
    (run_dir,) = out.iterdir()
    assert run_dir.name.endswith(".interrupted")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["stop_reason"] == "interrupted" and info["rounds_completed"] >= 0
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in rows] == list(range(info["rounds_completed"] + 1))
    assert (run_dir / "config.toml").is_file()
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"fedsandbox: interrupted by {signal.Signals(signum).name} "
                           f"after round {info['rounds_completed']}") and str(run_dir) in last
    (entry,) = list_results(out)
    assert entry.state == "interrupted" and entry.rounds == info["rounds_completed"]


def test_run_directories_are_reserved_atomically(tmp_path):
    first = reserve_directory(tmp_path, "run-20261125-120000-abc")
    second = reserve_directory(tmp_path, "run-20261125-120000-abc")
    assert first[0] != second[0] and first[1] != second[1]
    assert first[0].is_dir() and second[0].name == "run-20261125-120000-abc-2.partial"
    first[0].rename(first[1].with_name(first[1].name + ".failed"))  # its marker stays taken
    third = reserve_directory(tmp_path, "run-20261125-120000-abc")
    assert third[1].name == "run-20261125-120000-abc-3"


def test_ls_lists_every_state(tmp_path, small):
    import sandbox

    cfg = small(**{"output.dir": str(tmp_path)})
    sandbox.run(cfg)
    reserve_directory(tmp_path, "killed-run")  # what kill -9 leaves behind
    proc = subprocess.run([sys.executable, "-m", "sandbox", "ls", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["state", "kind", "rounds"] and len(lines) == 3
    assert any(line.startswith("finished") for line in lines)
    assert any(line.startswith("incomplete") and "killed-run.partial" in line for line in lines)
