"""Client failures are data: injected faults and timeouts are counted per round, the
run goes on with the replies it got, and stops clearly when too few remain."""

from __future__ import annotations

import json
import time

import pytest

import sandbox
from sandbox.cli import main
from sandbox.core.faults import injected_failure


def expected_failures(cfg, run_dir):
    """What [faults] must have caused, recomputed from the participation record."""
    chosen = json.loads((run_dir / "participation.json").read_text())
    return {int(r): {purpose: sorted(p for p in pids
                                     if injected_failure(cfg, int(r), p, purpose))
                     for purpose, pids in by_purpose.items()}
            for r, by_purpose in chosen.items()}


@pytest.mark.parametrize("backend", ["inline", "ray"])
def test_failing_clients_are_counted_per_round_and_the_run_completes(small, backend):
    cfg = small(backend=backend, rounds=4, **{"data.num_clients": 6,
                                              "faults.client_failure_rate": 0.2})
    result = sandbox.run(cfg)
    assert result.stop_reason is sandbox.StopReason.FINISHED
    expected = expected_failures(cfg, result.run_dir)
    assert sum(len(p) for r in expected.values() for p in r.values()) >= 2  # faults happened
    for row in result.rounds[1:]:
        want = expected[row["round"]]
        assert row["train_failures"] == len(want["train"])
        assert row["evaluate_failures"] == len(want["evaluate"])
        got = row["failures"] or {}
        for purpose, pids in want.items():
            assert sorted(int(p) for p in got.get(purpose, {})) == pids
            assert all(why.startswith("InjectedFault: injected fault")
                       for why in got.get(purpose, {}).values())
    csv_text = (result.run_dir / "metrics.csv").read_text()
    assert "train_failures" in csv_text.splitlines()[0] and "InjectedFault" in csv_text


def test_failures_are_the_same_on_both_backends(small):
    overrides = {"rounds": 3, "data.num_clients": 5, "faults.client_failure_rate": 0.3,
                 "federation.fraction_train": 0.6}
    rows = {b: sandbox.run(small(backend=b, **overrides)).rounds for b in ("inline", "ray")}
    assert json.dumps(rows["inline"]) == json.dumps(rows["ray"])


def test_too_few_replies_stop_the_run_with_a_clear_message(small, capsys):
    cfg = small(**{"faults.fail_partitions": [0, 1, 2], "federation.min_train_replies": 2})
    with pytest.raises(sandbox.RunFailed) as caught:
        sandbox.run(cfg)
    assert caught.value.stop_reason is sandbox.StopReason.FAILED
    assert "1 of 4 sampled clients replied, fewer than federation.min_train_replies = 2" \
        in str(caught.value.cause)
    info = json.loads((caught.value.run_dir / "run.json").read_text())
    assert info["stop_reason"] == "failed" and info["rounds_completed"] == 0
    code = main(["run", str(caught.value.run_dir / "config.toml")])  # the same config
    assert code == 4 and "fewer than federation.min_train_replies" in capsys.readouterr().err


def test_a_slow_client_times_out_inline_and_the_round_goes_on(small):
    cfg = small(rounds=2, **{"faults.slow_partitions": [3], "faults.slow_seconds": 1.0,
                             "runtime.client_timeout_s": 0.3})
    result = sandbox.run(cfg)
    for row in result.rounds[1:]:
        assert row["train_failures"] == 1 and row["evaluate_failures"] == 1
        assert row["failures"]["train"]["3"].startswith(
            "TimeoutError: no reply within runtime.client_timeout_s = 0.3 s")
    assert result.final["train_loss"] is not None  # the other three clients trained


@pytest.mark.parametrize(("overrides", "needle"), [
    ({"faults.fail_partitions": [9]}, "faults.fail_partitions: [9] are not clients"),
    ({"faults.slow_partitions": [1]}, "faults.slow_seconds > 0"),
    ({"faults.client_failure_rate": 1.0}, "faults.client_failure_rate"),
    ({"runtime.client_timeout_s": 0}, "runtime.client_timeout_s"),
    ({"federation.min_train_replies": 0}, "federation.min_train_replies"),
])
def test_fault_and_runtime_keys_are_checked(small, overrides, needle):
    with pytest.raises(sandbox.ConfigError, match=needle.replace("[", r"\[").replace(
            "]", r"\]")):
        small(**overrides)


def test_a_client_that_hangs_inline_is_stopped_and_stops_the_run(small, monkeypatch):
    """Past its timeout plus the grace period the inline grid's watchdog stops the client
    (it would sleep 30 s) and the run fails with a message naming the node and the limit."""
    from sandbox.engine.runtime import inline

    monkeypatch.setattr(inline, "GRACE_S", 0.3)
    monkeypatch.setattr(inline, "WATCH_INTERVAL_S", 0.05)
    cfg = small(rounds=2, **{"faults.slow_partitions": [3], "faults.slow_seconds": 30.0,
                             "runtime.client_timeout_s": 0.2})
    started = time.monotonic()
    with pytest.raises(sandbox.RunFailed) as caught:
        sandbox.run(cfg)
    assert time.monotonic() - started < 25  # stopped, not slept to the end
    assert "was still running 0.5 s after it started" in str(caught.value.cause)
    assert "was stopped" in str(caught.value.cause)
