"""Runtime backends: ``inline`` (in-process Grid, default), ``vectorized`` (inline with a
round's clients trained as one batch), ``pool`` (worker processes) and ``ray`` (Flower
simulation).

All run the same ``ServerApp`` (``sandbox.engine.server``) and ``ClientApp``
(``clients.app``). Flower is imported only when a run starts. Both apps set the
configured thread counts themselves (:mod:`clients.threads`), so a backend needs no thread
set-up of its own; :func:`reserve_threads` checks before a run that its process can.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, get_args

from sandbox.core.config import Backend

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.engine.checkpoint import Checkpoint
    from sandbox.engine.server import RoundObserver

# Flower reports usage over the network by default; runs here are offline.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

BACKENDS = get_args(Backend)


def run_federation(cfg: Config, observer: RoundObserver,
                   resume: Checkpoint | None = None) -> None:
    """Run experiment ``cfg`` on ``cfg.backend``; results arrive through ``observer``.

    ``resume`` continues a checkpointed run (inline, vectorized and pool backends: node
    states restored).
    """
    import logging

    from clients import make_client_app
    from sandbox.engine.server import make_server_app

    logging.getLogger("flwr").setLevel(logging.WARNING)
    server_app = make_server_app(cfg, observer, resume)
    client_app = make_client_app(cfg)
    if cfg.backend == "inline":
        from sandbox.engine.runtime.inline import run_inline

        run_inline(server_app, client_app, cfg.data.num_clients,
                   states=None if resume is None else resume.node_states)
    elif cfg.backend == "vectorized":  # node states live in the grid, as on inline
        from sandbox.engine.runtime.vectorized import run_vectorized

        run_vectorized(server_app, client_app, cfg,
                       states=None if resume is None else resume.node_states)
    elif cfg.backend == "pool":  # node states live in this process, as on inline
        from sandbox.engine.runtime.pool import run_pool

        run_pool(server_app, cfg, states=None if resume is None else resume.node_states)
    elif resume is not None:
        raise ValueError(f"resuming needs backend 'inline', 'vectorized' or 'pool', not "
                         f"'{cfg.backend}'")
    elif cfg.backend == "ray":
        from sandbox.engine.runtime.ray_backend import run_ray

        run_ray(server_app, client_app, cfg)
    else:
        raise ValueError(f"unknown backend '{cfg.backend}'; allowed: {', '.join(BACKENDS)}")


def reserve_threads(cfg: Config) -> None:
    """Check, before a run writes anything, that this process can run ``cfg``'s thread counts.

    TensorFlow sizes its thread pools once per process (:mod:`clients.threads`). On the
    inline backend clients and server share this process, so a Keras run needs
    ``runtime.threads_per_client == runtime.server_threads``; and the process that runs the
    server gets its count now, or :class:`~clients.threads.ThreadsUnavailable` if its
    TensorFlow already runs with another. torch counts can change at any time.

    Raises
    ------
    ThreadsUnavailable
        This process's TensorFlow already runs with another count.
    """
    if cfg.framework == "torch":
        return
    if cfg.framework == "mixed":
        # Only the Keras clients use TensorFlow (the server evaluates in torch); on inline
        # they run in this process.
        if cfg.backend == "inline":
            from clients import tensorflow_threads

            tensorflow_threads(cfg.runtime.threads_per_client)
        return
    # (Keras on inline with two different counts is refused by the config schema.)
    from clients import tensorflow_threads

    tensorflow_threads(cfg.runtime.server_threads)
