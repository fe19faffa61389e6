"""The ``inline`` backend: an in-process Flower ``Grid`` with no SuperLink, Ray or polling.

``InlineGrid`` implements Flower's abstract ``Grid``: pushing a message delivers it
straight to ``ClientApp(message, context)`` with that node's own ``Context``, which lives
as long as the grid, so ``context.state`` persists across rounds as it does on a real
SuperNode. Stock strategies run on it unchanged because ``Strategy.start`` only talks to
a ``Grid``.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable

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


class _Call:
    """One ClientApp call handed to the worker thread, and what it gave."""

    __slots__ = ("args", "done", "error", "fn", "reply")

    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn, self.args = fn, args
        self.done = threading.Event()
        self.reply: Message | None = None
        self.error: BaseException | None = None


class _ClientWorker:
    """One persistent thread that runs the grid's ClientApp calls, one at a time.

    A thread of its own lets the grid stop waiting for a client after
    ``runtime.client_timeout_s``; one persistent thread instead of one per message saves
    ~0.12 ms per client and round (thread start and join; measured in
    ``benchmarks/bench_runtime.py``'s notes).
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="inline-client", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args) -> _Call:
        call = _Call(fn, args)
        self._calls.put(call)
        return call

    def close(self) -> None:
        """Let the thread end after the calls already submitted."""
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                call.reply = call.fn(*call.args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                call.error = exc
            call.done.set()


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
        self._worker = _ClientWorker()

    def close(self) -> None:
        """Release the grid's worker thread (after the run)."""
        self._worker.close()

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
        """Run each pending message's ClientApp call, one after another.

        A call that takes longer than ``timeout`` seconds gives no reply (the strategy
        records the client as timed out). Python cannot stop a running function, so the
        grid then waits up to ``max(timeout, GRACE_S)`` more for it to return before the
        next client starts (clients share this process's trainers); a client still
        running after that stops the run instead of hanging it.
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
        context = self._contexts[msg.metadata.dst_node_id]
        call = self._worker.submit(self._client_app, msg, context)
        if not call.done.wait(timeout):
            grace = max(timeout, GRACE_S)
            if not call.done.wait(grace):
                raise RuntimeError(
                    f"the client of node {msg.metadata.dst_node_id} is still running "
                    f"{timeout + grace:g} s after it started (runtime.client_timeout_s = "
                    f"{timeout:g}); the inline backend cannot stop a running client: use "
                    "backend = 'pool' or 'ray' for clients that may hang")
            return None  # finished late: its reply is not used
        if call.error is not None:
            raise call.error
        return call.reply

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
