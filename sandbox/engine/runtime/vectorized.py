"""The ``vectorized`` backend: the inline Grid, with a round's train messages trained at once.

``VectorizedGrid`` is an :class:`~sandbox.engine.runtime.inline.InlineGrid` whose
``pull_messages`` hands the round's train messages, with their nodes' ``Context``, to
:func:`clients.train_vectorized`: one batched torch computation over all those clients
(``torch.func.vmap`` over stacked parameters; :mod:`clients.vectorized`), whose replies
and node states are built as the ClientApp builds them. Every message it leaves (evaluate
and query messages, a client with an injected fault or delay) goes to the ClientApp one by
one as on the inline backend, with the same timeouts. Replies keep message order, so the
strategy sees what it sees on the inline backend, and node states live in the grid
(checkpoints and ``--resume`` as inline).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from clients import train_vectorized, vectorized_unsupported
from sandbox.core.config import Config
from sandbox.engine.runtime.inline import InlineGrid, run_grid

logger = logging.getLogger(__name__)


class VectorizedGrid(InlineGrid):
    """An :class:`InlineGrid` that trains each round's clients as one batched computation."""

    def __init__(self, cfg: Config, client_app: ClientApp, *, run_id: int,
                 states: dict[int, RecordDict] | None = None) -> None:
        super().__init__(client_app, cfg.data.num_clients, run_id=run_id, states=states)
        self._cfg = cfg
        why = vectorized_unsupported(cfg)
        if why is not None:
            logger.warning("backend 'vectorized' cannot batch these clients: %s; they train "
                           "one by one as on backend 'inline'", why)

    def pull_messages(self, message_ids: Iterable[str], *,
                      timeout: float | None = None) -> Iterable[Message]:
        """Train messages in one batch; the others (and those it leaves) one by one."""
        ids = list(message_ids)
        train = [i for i in ids if self._pending[i].metadata.message_type == MessageType.TRAIN]
        batched: dict[str, Message] = {}
        if train:
            calls = [(self._pending[i], self._contexts[self._pending[i].metadata.dst_node_id])
                     for i in train]
            for message_id, reply in zip(train, train_vectorized(self._cfg, calls),
                                         strict=True):
                if reply is not None:
                    batched[message_id] = reply
        replies = []
        for message_id in ids:
            msg = self._pending.pop(message_id)
            reply = batched[message_id] if message_id in batched else self._call(msg, timeout)
            if reply is not None:
                reply.metadata.__dict__["_message_id"] = f"{message_id}-reply"
                replies.append(reply)
        return replies


def run_vectorized(server_app: ServerApp, client_app: ClientApp, cfg: Config, *,
                   run_id: int = 1, states: dict[int, RecordDict] | None = None) -> VectorizedGrid:
    """Run ``server_app`` with ``cfg``'s clients trained round by round in one batch."""
    grid = VectorizedGrid(cfg, client_app, run_id=run_id, states=states)
    return run_grid(server_app, grid, run_id=run_id)
