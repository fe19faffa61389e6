"""One execution mode of ``fedsandbox compare-frameworks``, run in a fresh process.

``python -m sandbox.engine.frameworks_worker REQUEST.json`` reads ``{"config", "overrides",
"result"}``, runs the federation in this process (backend ``inline``, so every client
update runs here and :func:`clients.meter_updates` sees it) and writes the result JSON:
per-round validation/test accuracy, per-round wall seconds, every client update's wall
time, steps and peak RSS, and the time to build the trainer (framework import, model,
step functions). A run that fails, or whose clients fail (``torch.compile`` without a
working compiler, XLA refusing an op), is written as ``status = "unavailable"`` with the
reason: a mode never falls back to another one silently.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def _failure_reason(rows: list[dict]) -> str | None:
    for row in rows:
        failures = row.get("failures") or {}
        for purpose, by_partition in failures.items():
            for pid, reason in by_partition.items():
                return f"round {row['round']}: client {pid} failed its {purpose} message: {reason}"
    return None


def measure(config: str, overrides: dict) -> dict:
    """Run ``config`` with ``overrides`` here; the measurements (see the module docstring)."""
    from clients import framework_threads, meter_updates
    from sandbox.core.errors import RunFailed, SandboxError
    from sandbox.engine.api import run
    from sandbox.engine.preflight import load_config

    cfg = load_config(config, overrides)
    started = time.perf_counter()
    # TensorFlow fixes its pools at its first op: the configured count, before the model.
    with framework_threads(cfg.framework, cfg.runtime.threads_per_client):
        updates = meter_updates(cfg)
    build_s = time.perf_counter() - started
    try:
        result = run(cfg)
    except (RunFailed, SandboxError) as exc:
        cause = getattr(exc, "cause", exc)
        return {"status": "unavailable",
                "reason": f"{type(cause).__name__}: {cause}".splitlines()[0]}
    failed = _failure_reason(result.rounds)
    if failed is not None:
        return {"status": "unavailable", "reason": failed}
    return {
        "status": "ok",
        "rounds": [{"round": row["round"], "val": row["central_val_accuracy"],
                    "test": row["central_test_accuracy"],
                    "clients": len(row.get("train_partitions") or [])}
                   for row in result.rounds],
        "round_seconds": result.round_seconds,
        "updates": updates,
        "build_s": build_s,
        "process_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "threads": cfg.runtime.threads_per_client,
        "epsilon": result.epsilon,
    }


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text())
    try:
        outcome = measure(request["config"], request["overrides"])
    except Exception as exc:  # noqa: BLE001 - reported as the mode's reason, never hidden
        outcome = {"status": "unavailable",
                   "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    Path(request["result"]).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
