"""The ``pool`` backend: the inline Grid with its ClientApp calls spread over worker processes.

``runtime.workers`` processes (0: one per CPU core), fresh interpreters as ``spawn`` starts
them (safe with torch's and TensorFlow's threads, unlike ``fork``), each build the experiment's
``ClientApp`` once and keep its trainers, data and compiled steps warm; the server side
stays this process's stock Flower strategy on real Messages. Every round's messages are
cut into chunks that idle workers take in turn; a worker answers message by message.

Node ``Context.state`` (round counters, each client's DP accountant) lives in this
process, in the grid's node contexts exactly as on the inline backend: each message
travels with its node's state and the reply brings the new state back. Checkpoints
therefore keep the same node states on both backends, and a worker holds nothing a run
needs to continue. Replies come back in message order, and a client computes the same
numbers in any process (same thread count, :mod:`clients.threads`), so a pool run gives
the inline run's metrics bit for bit.

Workers outlive a run: the next run in this process with the same worker and thread
counts reuses them (its ClientApp is built once per worker and config). A client that
exceeds ``runtime.client_timeout_s`` gives no reply, and its worker is terminated and
replaced (the pool, unlike the inline backend, can stop a hung client).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from sandbox.core.config import Config
from sandbox.engine.runtime.inline import InlineGrid, run_grid

#: what a worker sends once it has built a new run's ClientApp and data (clients' time
#: limits start then)
READY = "ready"
#: chunks per worker and round: small enough to balance, large enough to amortize a trip
CHUNKS_PER_WORKER = 4


def serve_fd(fd: int) -> None:
    """Worker process entry point: serve the grid on socket ``fd``."""
    _serve(Connection(fd))


def _serve(conn: Connection) -> None:
    """Worker process: build ClientApps on demand, answer each message with (reply, state)."""
    apps: dict[str, ClientApp] = {}
    while (job := conn.recv()) is not None:
        key, cfg, run_id, calls = job
        if key not in apps:
            apps = {key: _prepare(cfg)}  # one run at a time: drop older apps
            conn.send(READY)
        for msg, node_id, node_config, state in calls:
            context = Context(run_id=run_id, node_id=node_id, node_config=node_config,
                              state=state, run_config={})
            try:
                conn.send((apps[key](msg, context), context.state, None))
            except BaseException as exc:  # noqa: BLE001 - re-raised by the grid
                conn.send((None, None, _portable(exc)))


def _prepare(cfg: Config) -> ClientApp:
    """The run's ClientApp, with its data loaded and its framework imported (the work
    of a process's first client, which is not that client's time)."""
    from clients import framework_threads, get_evaluator, make_client_app
    from sandbox.core import wire
    from sandbox.core.experiment import load_experiment_data

    load_experiment_data(cfg)
    with framework_threads(cfg.framework, cfg.runtime.threads_per_client):
        get_evaluator(cfg.framework, wire.model_spec_for(cfg), cfg.train)
    return make_client_app(cfg)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles, else a RuntimeError carrying its type and message."""
    import pickle

    try:
        pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class _Worker:
    """One worker process: a fresh interpreter, as the ``spawn`` start method starts one.

    It is started as ``python -c`` rather than by ``multiprocessing``, whose ``spawn``
    re-runs the parent's ``__main__`` script in the child (a script that calls
    ``sandbox.run`` without an ``if __name__ == "__main__"`` guard would run again there).
    """

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import serve_fd; serve_fd({child.fileno()})"],
            pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL)
        child.close()
        self.conn = Connection(parent.detach())
        self.chunk: deque[str] = deque()  # message ids sent, not yet answered
        self.started = 0.0  # when the message at the head of ``chunk`` started
        self.run_key = ""  # the config whose ClientApp the worker has built

    def stop(self, *, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()


class WorkerPool:
    """``count`` warm worker processes."""

    def __init__(self, count: int) -> None:
        self.workers = [_Worker() for _ in range(count)]

    def replace(self, worker: _Worker) -> _Worker:
        """Kill ``worker`` (a hung client) and start a fresh one in its place."""
        worker.stop(kill=True)
        fresh = _Worker()
        self.workers[self.workers.index(worker)] = fresh
        return fresh

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []


_pools: dict[tuple[int, int], WorkerPool] = {}


def worker_pool(cfg: Config) -> WorkerPool:
    """This process's pool for ``cfg``'s worker and thread counts (started on first use).

    TensorFlow fixes a process's thread count once, so pools differ per thread count.
    """
    count = cfg.runtime.workers or os.cpu_count() or 1
    key = (count, cfg.runtime.threads_per_client)
    if key not in _pools:
        _pools[key] = WorkerPool(count)
    return _pools[key]


def discard_pool(pool: WorkerPool) -> None:
    """Kill ``pool``'s workers and forget it (after an error left them mid-round)."""
    for key, known in list(_pools.items()):
        if known is pool:
            del _pools[key]
    for worker in pool.workers:
        worker.stop(kill=True)
    pool.workers = []


@atexit.register
def close_pools() -> None:
    """Stop every worker this process started."""
    while _pools:
        _pools.popitem()[1].close()


class PoolGrid(InlineGrid):
    """An :class:`InlineGrid` whose ClientApp calls run in a :class:`WorkerPool`."""

    def __init__(self, cfg: Config, pool: WorkerPool, *, run_id: int,
                 states: dict[int, RecordDict] | None = None) -> None:
        super().__init__(None, cfg.data.num_clients, run_id=run_id, states=states)
        self._cfg, self._pool = cfg, pool
        self._key = cfg.model_dump_json()

    def pull_messages(self, message_ids, *, timeout: float | None = None):
        """Run the pending messages in the pool; replies in message order.

        A message that runs longer than ``timeout`` seconds gives no reply: its worker is
        terminated and restarted, and the rest of its chunk goes back to the queue.
        """
        ids = list(message_ids)
        try:
            answers = self._run_chunks(ids, timeout)
        except BaseException:
            # Workers may still be busy with this round: none of them is reused.
            discard_pool(self._pool)
            raise
        replies = []
        for message_id in ids:
            reply = answers[message_id]
            if reply is not None:
                reply.metadata.__dict__["_message_id"] = f"{message_id}-reply"
                replies.append(reply)
        return replies

    def _run_chunks(self, ids: list[str], timeout: float | None) -> dict[str, Message | None]:
        size = max(1, -(-len(ids) // (CHUNKS_PER_WORKER * len(self._pool.workers))))
        todo = deque(ids[i:i + size] for i in range(0, len(ids), size))
        answers: dict[str, Message | None] = {}
        while todo or any(w.chunk for w in self._pool.workers):
            for worker in self._pool.workers:
                if not worker.chunk and todo:
                    self._send(worker, todo.popleft())
            self._collect(answers, todo, timeout)
        return answers

    def _send(self, worker: _Worker, chunk: list[str]) -> None:
        calls = []
        for message_id in chunk:
            msg = self._pending[message_id]
            context = self._contexts[msg.metadata.dst_node_id]
            calls.append((msg, context.node_id, context.node_config, context.state))
        worker.conn.send((self._key, self._cfg, self._run.run_id, calls))
        worker.chunk.extend(chunk)
        # A worker new to this config first builds its ClientApp (and may still be
        # starting): no client's clock runs until it says READY.
        worker.started = time.monotonic() if worker.run_key == self._key else math.inf
        worker.run_key = self._key

    def _collect(self, answers: dict, todo: deque, timeout: float | None) -> None:
        busy = {w.conn: w for w in self._pool.workers if w.chunk}
        first = min(w.started for w in busy.values())
        wait_s = None if timeout is None or first == math.inf else max(
            0.0, first + timeout - time.monotonic())
        for conn in wait(list(busy), wait_s):
            worker = busy[conn]
            try:
                answer = conn.recv()
            except EOFError:
                raise RuntimeError(f"pool worker {worker.process.pid} died (exit code "
                                   f"{worker.process.poll()})") from None
            worker.started = time.monotonic()
            if answer == READY:
                continue
            reply, state, error = answer
            if error is not None:
                raise error
            message_id = worker.chunk.popleft()
            msg = self._pending.pop(message_id)
            self._contexts[msg.metadata.dst_node_id].state = state
            answers[message_id] = reply
        now = time.monotonic()
        for worker in list(busy.values()):
            if worker.chunk and timeout is not None and now - worker.started >= timeout:
                hung = worker.chunk.popleft()
                self._pending.pop(hung)
                answers[hung] = None  # the strategy counts it as timed out
                if worker.chunk:
                    todo.appendleft(list(worker.chunk))
                self._pool.replace(worker)


def run_pool(server_app: ServerApp, cfg: Config, *, run_id: int = 1,
             states: dict[int, RecordDict] | None = None) -> PoolGrid:
    """Run ``server_app`` with ``cfg``'s clients in this process's worker pool."""
    grid = PoolGrid(cfg, worker_pool(cfg), run_id=run_id, states=states)
    return run_grid(server_app, grid, run_id=run_id)
