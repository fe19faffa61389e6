"""The ``pool`` backend: worker processes give the inline backend's numbers and node states."""

from __future__ import annotations

import json

import pytest

import sandbox
from tests.conftest import ROOT

DP = {"privacy.sample.enabled": True, "privacy.noise": "seeded"}


class Sink:
    prior_ledger = None

    def round_finished(self, server_round, metrics): ...

    def strategy_started(self, accounted, node_states=None): ...

    def strategy_finished(self, accounted, stopped): ...


@pytest.mark.parametrize("extra", [
    {"federation.strategy": "fedadam", "federation.strategy_args": {"eta": 0.05},
     "federation.fraction_train": 0.5, **DP},
    {"federation.strategy": "fedprox", "federation.strategy_args": {"proximal_mu": 0.1},
     "runtime.workers": 1},
], ids=["fedadam-dp-2-workers", "fedprox-1-worker"])
def test_pool_gives_the_inline_metrics(small, extra):
    extra = {"data.num_clients": 6, "runtime.workers": 2, **extra}
    inline = sandbox.run(small(**extra))
    pool = sandbox.run(small(backend="pool", **extra))
    for name in ("metrics.json", "participation.json", "privacy.json"):
        assert (pool.run_dir / name).read_text() == (inline.run_dir / name).read_text(), name


def test_pool_keeps_node_states_like_inline(small):
    """Context.state (progress, each client's DP accountant) lives in the grid, as inline."""
    from clients import make_client_app
    from sandbox.engine.runtime.inline import run_inline
    from sandbox.engine.runtime.pool import run_pool
    from sandbox.engine.server import make_server_app

    cfg = small(rounds=3, backend="pool", **{"runtime.workers": 2, **DP})
    inline = run_inline(make_server_app(cfg, Sink()), make_client_app(cfg), 4).node_states()
    pool = run_pool(make_server_app(cfg, Sink()), cfg).node_states()
    assert sorted(pool) == sorted(inline)
    for node, state in inline.items():
        assert set(state.keys()) == {"client-progress", "dp-accountant"}
        for key in state.keys():
            assert dict(pool[node][key]) == dict(state[key]), (node, key)
    assert all(dict(s["client-progress"])["rounds"] == 3 for s in pool.values())


def test_a_hung_client_is_killed_and_the_round_goes_on(small):
    """A client past runtime.client_timeout_s gives no reply; its worker is replaced."""
    from sandbox.engine.runtime.pool import worker_pool

    pooled = {"backend": "pool", "runtime.workers": 2}
    sandbox.run(small(rounds=1, **pooled))  # warm workers: a process's first client is slow
    cfg = small(rounds=1, **pooled, **{"faults.slow_partitions": [3],
                                       "faults.slow_seconds": 600.0,
                                       "runtime.client_timeout_s": 5.0})
    before = [w.process.pid for w in worker_pool(cfg).workers]
    result = sandbox.run(cfg)
    row = result.rounds[1]
    assert row["train_failures"] == 1 and row["evaluate_failures"] == 1
    assert row["failures"]["train"]["3"].startswith(
        "TimeoutError: no reply within runtime.client_timeout_s = 5 s")
    assert result.final["train_loss"] is not None  # the other three clients trained
    after = [w.process.pid for w in worker_pool(cfg).workers]
    assert len(after) == 2 and set(after) != set(before)


def test_a_client_error_stops_the_run_and_discards_the_workers(small, monkeypatch):
    """An error outside the ClientApp's failure replies reaches the caller, and no
    half-busy worker serves the next run."""
    from sandbox.engine.runtime import pool

    cfg = small(backend="pool", **{"runtime.workers": 1})
    used = pool.worker_pool(cfg)

    def broken(self, worker, chunk):
        raise OSError("worker pipe broke")

    monkeypatch.setattr(pool.PoolGrid, "_send", broken)
    with pytest.raises(sandbox.RunFailed, match="worker pipe broke"):
        sandbox.run(cfg)
    assert used.workers == [] and pool.worker_pool(cfg) is not used


def test_pool_run_in_a_script_without_main_guard(tmp_path):
    """Workers are fresh interpreters that never re-run the caller's ``__main__``."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "import json, sandbox\nfrom pathlib import Path\nfrom tests.conftest import "
        "small_overrides\nprint('started')\ncfg = sandbox.load_config('configs/quickstart.toml',"
        f" small_overrides(Path({str(tmp_path)!r}), backend='pool', rounds=1))\n"
        "print(json.dumps(sandbox.run(cfg).final))\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("started") == 1
    assert json.loads(proc.stdout.strip().splitlines()[-1])["central_test_accuracy"] > 0
