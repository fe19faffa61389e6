"""The sandbox as a Flower App: module-level ``serverapp`` and ``clientapp`` for ``flwr run``.

``pyproject.toml`` names them in ``[tool.flwr.app.components]``, so
``flwr run . <connection>`` runs any sandbox config on a Deployment Engine (or a
simulation federation). Both apps read the experiment from the run config
(``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``):

``config``
    A config file's path relative to the app's directory (``configs/quickstart.toml``;
    the FAB carries ``configs/``), an absolute path, or the config's TOML text itself
    (what ``backend = "deployment"`` sends: the resolved config, so nothing depends on
    files at the SuperNodes).
``set``
    ``--set`` overrides, ``;``-separated: ``"rounds=3;data.alpha=0.1"``.
``run-dir``
    The results directory the ServerApp writes into (an existing ``<run>.partial``
    created by the ``fedsandbox run`` process); empty: a new one under ``output.dir``
    (relative to the ServerApp process's working directory).

The ServerApp runs the engine's own path (:func:`sandbox.engine.api.run_on_grid`: the
same pre-flight, recorder and run directory as ``inline``) on the grid Flower hands it.
The ClientApp is :func:`clients.make_client_app` of the same config: each SuperNode
reads its shard from ``--node-config "partition-id=… num-partitions=…"`` and builds it
locally from the seeded data source; no data travels in messages.
"""

from __future__ import annotations

import functools
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from sandbox.core import wire
from sandbox.core.errors import ConfigError
from sandbox.core.tomlio import parse_overrides, set_dotted
from sandbox.engine.grids import ForwardingGrid
from sandbox.engine.preflight import load_config, validate_config

if TYPE_CHECKING:
    from flwr.app import UserConfig

    from sandbox.core.config import Config

#: The app's directory (the repository, or the FAB's installed copy on a node).
APP_DIR = Path(__file__).resolve().parents[2]
CONFIG_KEY = "config"
OVERRIDES_KEY = "set"
RUN_DIR_KEY = "run-dir"


def config_from_run_config(run_config: UserConfig) -> Config:
    """The experiment :class:`Config` a run config describes (path or TOML text + ``set``).

    Raises
    ------
    ConfigError
        No ``config`` key, an unreadable file, invalid TOML or an invalid config.
    """
    if CONFIG_KEY not in run_config:
        raise ConfigError(f"run config: no '{CONFIG_KEY}' key (a config path or its "
                          "TOML text; see [tool.flwr.app.config] in pyproject.toml)")
    return _parse(str(run_config[CONFIG_KEY]), str(run_config.get(OVERRIDES_KEY, "")))


@functools.lru_cache(maxsize=8)
def _parse(value: str, overrides_text: str) -> Config:
    overrides = [item.strip() for item in overrides_text.split(";") if item.strip()]
    if "\n" not in value and "=" not in value:  # a file
        path = Path(value).expanduser()
        return load_config(path if path.is_absolute() else APP_DIR / path, overrides)
    try:
        raw = tomllib.loads(value)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"run config '{CONFIG_KEY}': invalid TOML: {exc}") from None
    for key, item in parse_overrides(overrides):
        set_dotted(raw, key, item)
    return validate_config(raw, source=f"run config '{CONFIG_KEY}'")


@functools.lru_cache(maxsize=8)
def _client_app(value: str, overrides_text: str) -> ClientApp:
    from clients import make_client_app

    return make_client_app(_parse(value, overrides_text))


def _delegate(msg: Message, context: Context) -> Message:
    """Hand ``msg`` to the ClientApp of the run's config (built once per process)."""
    run_config = context.run_config
    config_from_run_config(run_config)  # a clear error for a bad run config
    app = _client_app(str(run_config[CONFIG_KEY]), str(run_config.get(OVERRIDES_KEY, "")))
    return app(msg, context)


class NodeAttributedGrid(ForwardingGrid):
    """``grid`` whose replies always come from the node that was asked.

    A SuperNode can leave a run in two ways, and the SuperLink reports neither as a
    reply from that node, while the server's failure records and partition-ordered
    aggregation look replies up by sender:

    * killed (no heartbeat): the SuperLink answers for it with a "Node Unavailable"
      error whose sender is the SuperLink itself (node id 1);
    * stopped (it unregistered): the SuperLink refuses the message at push time (an
      empty message id), and Flower's ``send_and_receive`` then pulls an unknown id
      and gets a "Message Unavailable" error that names no message at all.

    Messages are therefore pushed and pulled here: a refused message gets a "Node
    Unavailable" error reply from its destination at once, and an error reply sent by
    the SuperLink is re-issued as the same error from the message's destination.
    """

    #: Seconds between two pulls while replies are outstanding (Flower's loop waits 3 s).
    POLL_S = 0.5

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        message_ids = list(self._grid.push_messages(messages))  # sets the messages' ids
        if len(message_ids) != len(messages):  # Flower refused the whole batch
            message_ids = [""] * len(messages)
        replies = [_unavailable(msg) for msg, mid in zip(messages, message_ids, strict=True)
                   if not mid]
        pending = {mid for mid in message_ids if mid}
        deadline = None if timeout is None else time.monotonic() + timeout
        while pending:
            pulled = list(self._grid.pull_messages(sorted(pending)))
            replies += pulled
            pending -= {reply.metadata.reply_to_message_id for reply in pulled}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.POLL_S)
        asked = {msg.metadata.message_id: msg for msg in messages}
        nodes = {msg.metadata.dst_node_id for msg in messages}
        return [Message(reply.error, reply_to=asked[reply.metadata.reply_to_message_id])
                if reply.has_error() and reply.metadata.src_node_id not in nodes
                and reply.metadata.reply_to_message_id in asked else reply
                for reply in replies]


def _unavailable(msg: Message) -> Message:
    """The error reply of ``msg``'s destination when the SuperLink refused ``msg``."""
    return Message(Error(ErrorCode.NODE_UNAVAILABLE,
                         f"Node Unavailable: the SuperLink refused the message for node "
                         f"{msg.metadata.dst_node_id} (it is no longer registered)"),
                   reply_to=msg)


serverapp = ServerApp()
clientapp = ClientApp()


@serverapp.main()
def _server_main(grid: Grid, context: Context) -> None:
    from sandbox.engine.api import run_on_grid

    cfg = config_from_run_config(context.run_config)
    run_dir = str(context.run_config.get(RUN_DIR_KEY, ""))
    run_on_grid(cfg, NodeAttributedGrid(grid), run_dir=Path(run_dir) if run_dir else None)


@clientapp.train()
def _train(msg: Message, context: Context) -> Message:
    return _delegate(msg, context)


@clientapp.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    return _delegate(msg, context)


@clientapp.query(wire.PARTITION_QUERY_ACTION)
def _partition(msg: Message, context: Context) -> Message:
    return _delegate(msg, context)
