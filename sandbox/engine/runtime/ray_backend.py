"""The ``ray`` backend: Flower's own ``run_simulation`` over the same ServerApp/ClientApp.

Flower's Ray transport imports TensorFlow whenever it is installed (to offer GPU memory
growth). A torch run hides TensorFlow from that import, in this process and, through a
Ray worker set-up hook, in every actor process, so torch runs stay TensorFlow-free and
actors start seconds faster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sandbox.core.errors import SandboxError

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp

    from sandbox.core.config import Config

_HIDE_TF_ENV = "FEDSANDBOX_HIDE_TENSORFLOW"


@contextlib.contextmanager
def _tensorflow_hidden(hide: bool) -> Iterator[None]:
    """While active, ``import tensorflow`` raises ModuleNotFoundError (if not yet imported)."""
    if not hide or "tensorflow" in sys.modules:
        yield
        return
    sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.modules.get("tensorflow") is None:
            del sys.modules["tensorflow"]


def worker_setup() -> None:
    """Ray worker set-up hook: hide TensorFlow in actors of torch runs."""
    if os.environ.get(_HIDE_TF_ENV) == "1" and "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]


@contextlib.contextmanager
def _quiet_stop_signals() -> Iterator[None]:
    """Flower runs the ServerApp in a thread: a round callback's stop (pruned, diverged,
    interrupted) would be printed there with a traceback before the engine re-raises it
    from the main thread (``RunRecorder.stop_exception``). Print only real errors."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, KeyboardInterrupt | SandboxError):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def run_ray(server_app: ServerApp, client_app: ClientApp, cfg: Config) -> None:
    import ray

    hide_tf = cfg.framework == "torch"
    with _tensorflow_hidden(hide_tf):
        from flwr.simulation import run_simulation
    # Ray is started here rather than by Flower so that actors get our set-up hook;
    # Flower reuses an initialised Ray.
    ray.init(
        num_cpus=os.cpu_count() or 1,
        logging_level=logging.ERROR,
        include_dashboard=False,
        runtime_env={
            "env_vars": {_HIDE_TF_ENV: "1" if hide_tf else "0",
                         "PYTHONPATH": os.pathsep.join(sys.path)},
            "worker_process_setup_hook": f"{__name__}.worker_setup",
        },
    )
    try:
        with _quiet_stop_signals():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cfg.data.num_clients,
                backend_config={"client_resources": {
                    "num_cpus": cfg.ray.num_cpus_per_client, "num_gpus": 0.0}},
            )
    finally:
        ray.shutdown()
