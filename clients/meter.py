"""Wall time, steps and peak memory of every local update a process's trainer runs.

For measurements (``fedsandbox compare-frameworks``): :func:`meter_updates` wraps the
``fit`` of the trainer that this process's clients share (:func:`clients.trainer.get_trainer`
caches one per process), so a federation run in the same process records every client
update without changing what it computes.

Peak memory is the process's resident set size (RSS) high-water mark during the update
minus its RSS just before: on Linux the mark is reset before each update by writing ``5`` to
``/proc/self/clear_refs`` and read from ``VmHWM`` in ``/proc/self/status``; it counts
what torch's and TensorFlow's native allocators take from the OS (which ``tracemalloc``
does not see), not memory they reuse from their own free lists. Where ``clear_refs``
cannot be written, ``ru_maxrss`` stands in: it never resets, so only updates that raise
the process's peak show a delta (``rss_method`` says which).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from clients.app import execution_mode
from clients.schedule import PAD
from clients.trainer import get_trainer
from sandbox.core import wire
from sandbox.core.config import Config

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> tuple[int, str]:
    """Reset the RSS high-water mark where possible; (current RSS in KiB, method)."""
    try:
        _CLEAR_REFS.write_text("5")
        return _status_kib("VmRSS"), "VmHWM reset via /proc/self/clear_refs"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (never reset)"


def peak_rss_kib() -> int:
    try:
        return _status_kib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def meter_updates(cfg: Config) -> list[dict]:
    """Record every client update of ``cfg``'s trainer in this process; the list fills up.

    Each entry: ``seconds`` (wall time of the ``fit`` call), ``steps`` (optimizer steps),
    ``examples`` (examples processed), ``peak_rss_kib`` (RSS high-water mark during the
    call minus RSS before it) and ``rss_method``. Call it before the run, in the process
    that runs the clients (backend ``inline``); ``framework`` must be torch or keras.
    """
    if cfg.framework not in ("torch", "keras"):
        raise ValueError(f"meter_updates needs framework torch or keras, got {cfg.framework}")
    trainer = get_trainer(cfg.framework, wire.model_spec_for(cfg), cfg.train,
                          private=cfg.privacy.sample.enabled,
                          mode=execution_mode(cfg, cfg.framework))
    fit = trainer.fit
    records: list[dict] = []

    def metered(x, y, schedule, **kwargs):
        before, method = reset_peak_rss()
        started = time.perf_counter()
        loss = fit(x, y, schedule, **kwargs)
        records.append({"seconds": time.perf_counter() - started, "steps": len(schedule),
                        "examples": int((schedule != PAD).sum()),
                        "peak_rss_kib": max(peak_rss_kib() - before, 0), "rss_method": method})
        return loss

    trainer.fit = metered
    return records
