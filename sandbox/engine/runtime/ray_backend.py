"""The ``ray`` backend: Flower's own ``run_simulation`` over the same ServerApp/ClientApp.

On a Ray started for the run, or on an existing cluster (``ray.address``, e.g. the
``host:port`` of ``ray start --head``); ``ray.num_cpus_per_client`` and
``ray.num_gpus_per_client`` are each client actor's share of it. ``run_simulation`` is
deprecated in Flower 1.42 in favour of ``flwr run`` against a simulation federation;
that path runs the ServerApp in Flower's own process, where round callbacks (pruning)
and a prior ledger cannot reach it, so this backend keeps ``run_simulation`` (see
docs/deployment.md).

Flower's Ray transport imports TensorFlow whenever it is installed (to offer GPU memory
growth). A torch run hides TensorFlow from that import, in this process and, through a
Ray worker set-up hook, in every actor process, so torch runs stay TensorFlow-free and
actors start seconds faster.
"""

from __future__ import annotations

import contextlib
import glob
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
    """Run the apps under Flower's Ray simulation: on a Ray started for this run, or on
    the existing cluster at ``ray.address`` (``ray start --head``), which is left running.

    Each client actor takes ``ray.num_cpus_per_client`` CPUs and
    ``ray.num_gpus_per_client`` GPUs of the cluster.
    """
    import ray

    hide_tf = cfg.framework == "torch"
    with _tensorflow_hidden(hide_tf):
        from flwr.simulation import run_simulation
    # Ray is started (or joined) here rather than by Flower so that actors get our set-up
    # hook; Flower reuses an initialised Ray.
    runtime_env = {
        "env_vars": {_HIDE_TF_ENV: "1" if hide_tf else "0",
                     "PYTHONPATH": os.pathsep.join(sys.path)},
        "worker_process_setup_hook": f"{__name__}.worker_setup",
    }
    if cfg.ray.address:  # the cluster's resources are its own
        ray.init(address=cfg.ray.address, logging_level=logging.ERROR,
                 runtime_env=runtime_env)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=local_gpus(),
                 logging_level=logging.ERROR, include_dashboard=False,
                 runtime_env=runtime_env)
    try:
        with _quiet_stop_signals():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cfg.data.num_clients,
                backend_config={"client_resources": {
                    "num_cpus": cfg.ray.num_cpus_per_client,
                    "num_gpus": cfg.ray.num_gpus_per_client}},
            )
    finally:
        ray.shutdown()  # on a cluster: this driver disconnects, the cluster stays


def local_gpus() -> int:
    """NVIDIA GPUs this process may use (``CUDA_VISIBLE_DEVICES``, else ``/dev/nvidiaN``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))
