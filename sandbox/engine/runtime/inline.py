"""The ``inline`` backend: an in-process Flower ``Grid`` with no SuperLink, Ray or polling.

``InlineGrid`` implements Flower's abstract ``Grid``: pushing a message delivers it
straight to ``ClientApp(message, context)`` with that node's own ``Context``, which lives
as long as the grid, so ``context.state`` persists across rounds as it does on a real
SuperNode. Stock strategies run on it unchanged because ``Strategy.start`` only talks to
a ``Grid``.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from collections.abc import Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from sandbox.core import wire

# Node ids are deterministic (Flower's runtimes draw random 64-bit ids).
FIRST_NODE_ID = 1_000
#: How long a timed-out client may still run before the run stops (at least the timeout).
GRACE_S = 10.0
#: How often the watchdog looks for a client past its deadline.
WATCH_INTERVAL_S = 0.5


class ClientHung(BaseException):
    """Raised inside a ClientApp call that ran past its time limit, to stop it.

    A ``BaseException``, so the ClientApp's failure handling (which turns exceptions into
    error replies) lets it through to the grid.
    """


class _Watchdog:
    """Stops a ClientApp call still running after its deadline.

    One persistent thread that wakes every :data:`WATCH_INTERVAL_S` seconds and, when the
    armed call has passed its deadline, raises :class:`ClientHung` in the thread running
    it (``PyThreadState_SetAsyncExc``: delivered when that thread next runs Python code).
    Arming and disarming take an uncontended lock and wake nobody, so a call costs the
    grid no thread switch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: tuple[object, int, float] | None = None  # token, thread id, deadline
        self._fired: object | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="inline-watchdog",
                                        daemon=True)
        self._thread.start()

    def arm(self, deadline: float) -> object:
        token = object()
        with self._lock:
            self._armed = (token, threading.get_ident(), deadline)
        return token

    def disarm(self, token: object) -> bool:
        """End the watch of ``token``'s call; whether it was stopped."""
        with self._lock:
            self._armed = None
            return self._fired is token

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            with self._lock:
                if self._armed is None or time.monotonic() < self._armed[2]:
                    continue
                token, thread_id, _ = self._armed
                self._armed, self._fired = None, token
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                           ctypes.py_object(ClientHung))


class InlineGrid(Grid):
    """Deliver each ``Message`` to an in-process ``ClientApp``, one node ``Context`` each."""

    def __init__(self, client_app: ClientApp, num_nodes: int, *, run_id: int,
                 states: dict[int, RecordDict] | None = None) -> None:
        self._client_app = client_app
        self._run = Run.create_empty(run_id)
        states = states or {}
        self._contexts = {
            FIRST_NODE_ID + pid: Context(
                run_id=run_id,
                node_id=FIRST_NODE_ID + pid,
                node_config={wire.NODE_PARTITION_ID: pid, wire.NODE_NUM_PARTITIONS: num_nodes},
                state=states.get(FIRST_NODE_ID + pid, RecordDict()),
                run_config={},
            )
            for pid in range(num_nodes)
        }
        self._message_ids = itertools.count(1)
        self._pending: dict[str, Message] = {}
        self._watchdog = _Watchdog()

    def close(self) -> None:
        """Release the grid's watchdog thread (after the run)."""
        self._watchdog.close()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def node_context(self, node_id: int) -> Context:
        return self._contexts[node_id]

    def node_states(self) -> dict[int, RecordDict]:
        """Every node's ``Context.state`` by node id (what a checkpoint keeps)."""
        return {node: context.state for node, context in self._contexts.items()}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"message for unknown node {msg.metadata.dst_node_id}")
            message_id = str(next(self._message_ids))
            msg.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = msg
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str], *,
                      timeout: float | None = None) -> Iterable[Message]:
        """Run each pending message's ClientApp call, one after another, in this thread.

        A call that takes longer than ``timeout`` seconds gives no reply (the strategy
        records the client as timed out). Clients share this process's trainers, so the
        next client starts only when a call has returned; a call still running
        ``max(timeout, GRACE_S)`` seconds after its timeout is stopped (:class:`_Watchdog`)
        and stops the run instead of hanging it.
        """
        replies = []
        for message_id in message_ids:
            msg = self._pending.pop(message_id)
            reply = self._call(msg, timeout)
            if reply is not None:
                reply.metadata.__dict__["_message_id"] = f"{message_id}-reply"
                replies.append(reply)
        return replies

    def _call(self, msg: Message, timeout: float | None) -> Message | None:
        """The ClientApp's reply to ``msg``, or ``None`` if it took longer than ``timeout``.

        The call runs in this thread: handing it to a client thread (as an earlier version
        did, to stop waiting at the timeout) cost a thread switch per message, 17 % of a
        run's wall time with federated evaluation (benchmarks/bench_inline_breakdown.py).
        """
        context = self._contexts[msg.metadata.dst_node_id]
        limit = float("inf") if timeout is None else timeout
        stop_after = limit + max(limit, GRACE_S)
        started = time.monotonic()
        token = self._watchdog.arm(started + stop_after)
        try:
            try:
                reply = self._client_app(msg, context)
            finally:
                stopped = self._watchdog.disarm(token)
        except ClientHung:
            stopped = True
        if stopped:
            raise RuntimeError(
                f"the client of node {msg.metadata.dst_node_id} was still running "
                f"{stop_after:g} s after it started (runtime.client_timeout_s "
                f"= {limit:g}) and was stopped; use backend = 'pool' or 'ray' for clients "
                "that may hang (their workers can be replaced)")
        if time.monotonic() - started > limit:
            return None  # finished late: its reply is not used
        return reply

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages), timeout=timeout)


def run_inline(
    server_app: ServerApp, client_app: ClientApp, num_nodes: int, *, run_id: int = 1,
    states: dict[int, RecordDict] | None = None,
) -> InlineGrid:
    """Run ``server_app`` against ``num_nodes`` in-process nodes (with restored node
    ``states``, when resuming); return the grid."""
    return run_grid(server_app, InlineGrid(client_app, num_nodes, run_id=run_id,
                                           states=states), run_id=run_id)


def run_grid(server_app: ServerApp, grid: InlineGrid, *, run_id: int) -> InlineGrid:
    """Start ``server_app`` on ``grid`` in this process, as Flower's runtimes start one."""
    # Message() reads the sender's identity from the process-wide task identity, which
    # Flower's own runtimes set before starting a ServerApp.
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    server_context = Context(
        run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
        run_config={},
    )
    try:
        server_app(grid, server_context)
    finally:
        grid.close()
    return grid
