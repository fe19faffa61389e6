"""Graceful SIGINT/SIGTERM: the first signal stops the work at the next round boundary.

:func:`graceful_interrupts` (used by the CLI around every command) replaces the handlers
of SIGINT and SIGTERM while it is active. The first signal only sets a flag and says so
on stderr; the run recorder checks it after every round (:func:`check`) and raises
:class:`~sandbox.core.errors.RunInterrupted` there, so the round's results are complete
and written with ``stop_reason = "interrupted"``. A second signal interrupts at once
(``KeyboardInterrupt``). Without the context manager (a research script calling
``sandbox.run``), Ctrl-C raises ``KeyboardInterrupt`` wherever Python is, as usual.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from sandbox.core.errors import RunInterrupted

_requested: list[int] = []  # signal numbers received while graceful handling is active


def check(server_round: int | None = None) -> None:
    """Raise :class:`RunInterrupted` if a stop was requested (call at round boundaries)."""
    if _requested:
        number = _requested[0]
        raise RunInterrupted(signal.Signals(number).name, 128 + number, server_round)


def _handle(number: int, frame) -> None:
    if _requested:  # the second signal: stop now
        raise RunInterrupted(signal.Signals(number).name, 128 + number)
    _requested.append(number)
    print(f"\nfedsandbox: {signal.Signals(number).name} received: stopping after the "
          "current round and keeping its results (send it again to stop at once)",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def graceful_interrupts() -> Iterator[None]:
    """Handle SIGINT/SIGTERM gracefully while active (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in (signal.SIGINT, signal.SIGTERM)}
    _requested.clear()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _requested.clear()
