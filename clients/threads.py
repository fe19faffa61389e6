"""Thread counts of torch and TensorFlow ops: configuration, not a property of the machine.

Float reductions (matrix products, sums) split their work by the number of intra-op
threads, so the last bits of a result depend on it. Left alone, the count is whatever the
process happens to have: torch uses one thread per core, Ray's workers one
(``OMP_NUM_THREADS``), TensorFlow one per core. Every piece of framework work therefore
runs under :func:`framework_threads` with the count the config asks for
(``runtime.threads_per_client`` for a client's messages, ``runtime.server_threads`` for
the server's centralized evaluation), on every backend and in the thread that does it.

The two frameworks set their counts differently, and the design follows from that:

- torch (``torch.set_num_threads``; OpenMP underneath) keeps the count per thread and lets
  it change at any time, so the count is set on entry and restored on exit; the inline
  backend switches between client and server counts in one process.
- TensorFlow fixes its intra-op and inter-op pools when its context is initialized (its
  first op); afterwards ``tf.config.threading`` refuses another count. The count is set
  before that, and a process whose TensorFlow already runs with a different count gets
  :class:`ThreadsUnavailable` instead of a run with a count the config did not ask for.
  Importing the Keras trainer sets :data:`DEFAULT_THREADS` where nothing set a count yet, so
  models built outside a run (tests, benchmarks) share the default runs' pool.

torch's inter-op pool (``torch.set_num_interop_threads``) runs independent ops side by side
(TorchScript's ``fork``); eager models do not use it, so no number depends on it. It can be
set only once per process, before it starts: the first count applied in a process sets it
where torch still allows that.

Idle OpenMP threads sleep instead of spinning: importing this package sets
``OMP_WAIT_POLICY=PASSIVE`` unless the environment says otherwise (before torch loads its
OpenMP runtime, which reads the variable once). With the default policy an idle team
spins for a while after every parallel region; at 2 threads per client on a 2-core
machine that other work shares, the spinning threads and the scheduler's waits made a
federation's bare training loop 40x slower (7.8 s instead of 0.2 s for 20 clients x 5
rounds; ``benchmarks/RESULTS.md``). The policy decides how threads wait, not what they
compute: results are the same. :func:`framework_threads` warns once when torch was
imported before this package with the default policy and a count above 1 is asked for.

References: PyTorch, "CPU threading and TorchScript inference"
(https://pytorch.org/docs/stable/notes/cpu_threading_torchscript_inference.html);
TensorFlow, ``tf.config.threading``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from sandbox.core.config import RuntimeConfig
from sandbox.core.errors import SandboxError

#: The count a run uses unless its config says otherwise.
DEFAULT_THREADS: int = RuntimeConfig.model_fields["threads_per_client"].default

_torch_interop = {"tried": False}

#: torch (and its OpenMP runtime) loaded before the policy could be set
_POLICY_TOO_LATE = "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
_warned = {"policy": False}

logger = logging.getLogger(__name__)


class ThreadsUnavailable(SandboxError):
    """TensorFlow in this process already runs with another thread count than a run needs."""


@contextlib.contextmanager
def framework_threads(framework: str, count: int) -> Iterator[None]:
    """Run the block's ``framework`` ops (``"torch"`` or ``"keras"``) on ``count`` threads.

    Enter it in the thread that does the work: torch keeps its count per thread.

    Raises
    ------
    ThreadsUnavailable
        ``framework`` is ``"keras"`` and TensorFlow's pools already have another size.
    """
    if framework == "torch":
        import torch

        if count > 1 and _POLICY_TOO_LATE and not _warned["policy"]:
            _warned["policy"] = True
            logger.warning(
                "torch was imported before fedsandbox, so its OpenMP threads spin while idle "
                "(OMP_WAIT_POLICY unset); with %d threads per client that can be many times "
                "slower on a shared machine. Import sandbox or clients first, or set "
                "OMP_WAIT_POLICY=PASSIVE in the environment (results are the same).", count)
        _torch_interop_threads(count)
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
    elif framework == "keras":
        tensorflow_threads(count)
        yield
    else:
        raise ValueError(f"unknown framework '{framework}'; allowed: torch, keras")


def tensorflow_threads(count: int) -> None:
    """Size TensorFlow's intra-op and inter-op pools to ``count`` threads for this process.

    Raises
    ------
    ThreadsUnavailable
        TensorFlow is already initialized with other pool sizes (it fixes them then).
    """
    import tensorflow as tf

    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(count)
        threading.set_inter_op_parallelism_threads(count)
    except RuntimeError:
        current = threading.get_intra_op_parallelism_threads()
        running = (f"{current} intra-op threads" if current
                   else "its default thread count (one per core)")
        raise ThreadsUnavailable(
            f"this run needs TensorFlow with {count} threads (runtime.threads_per_client / "
            f"runtime.server_threads), but TensorFlow in this process was started with "
            f"{running} and cannot change it; run it in a new process, or with the "
            "thread count this process already uses") from None


def default_tensorflow_threads() -> None:
    """Give TensorFlow :data:`DEFAULT_THREADS` unless a count was set or it already runs."""
    import tensorflow as tf

    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() == 0:  # 0: nobody chose a count
        with contextlib.suppress(ThreadsUnavailable):  # already running: left as it is
            tensorflow_threads(DEFAULT_THREADS)


def _torch_interop_threads(count: int) -> None:
    import torch

    if _torch_interop["tried"]:
        return
    _torch_interop["tried"] = True
    # Raises once the pool has started or someone else set it; numbers do not depend on it.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(count)
