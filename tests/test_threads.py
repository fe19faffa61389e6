"""Thread counts are configuration: set where the work runs, restored, or refused clearly.

The cross-backend consequence (inline and Ray give identical numbers at 1 and at 2 threads)
is checked by ``tests/test_determinism.py::test_determinism_matrix``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading

import pytest

import sandbox
from clients.threads import DEFAULT_THREADS, framework_threads
from sandbox.cli import main
from tests.conftest import ROOT
from tests.test_runtime import _subprocess_run


@pytest.fixture
def torch_threads():
    """torch's count in this (the main) thread, restored after the test."""
    import torch

    original = torch.get_num_threads()
    yield torch
    torch.set_num_threads(original)


def test_torch_count_is_set_in_the_working_thread_and_restored(torch_threads):
    torch = torch_threads
    torch.set_num_threads(2)
    seen = {}

    def work() -> None:  # a thread of its own, as the inline backend's clients
        with framework_threads("torch", 1):
            seen["inside"] = torch.get_num_threads()
            torch.ones(64, 64) @ torch.ones(64, 64)
        seen["after"] = torch.get_num_threads()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen == {"inside": 1, "after": 2}
    with framework_threads("torch", 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_a_torch_run_evaluates_on_server_threads_and_restores_the_callers_count(
        small, torch_threads):
    torch = torch_threads
    torch.set_num_threads(2)
    seen = []
    cfg = small(rounds=1, **{"runtime.threads_per_client": 2, "runtime.server_threads": 1})
    sandbox.run(cfg, callbacks=[lambda server_round, row: seen.append(torch.get_num_threads())])
    assert seen == [1, 1]  # round callbacks run inside the server's evaluation
    assert torch.get_num_threads() == 2


TENSORFLOW_POOLS = """
import json
from clients.threads import ThreadsUnavailable, tensorflow_threads
{first}
import tensorflow as tf
import clients.keras_trainer
sizes = [tf.config.threading.get_intra_op_parallelism_threads(),
         tf.config.threading.get_inter_op_parallelism_threads()]
tf.constant(0.0).numpy()  # TensorFlow starts: its pools are fixed from here on
tensorflow_threads(sizes[0])  # the same count again is fine
try:
    tensorflow_threads(sizes[0] + 1)
    refused = ""
except ThreadsUnavailable as exc:
    refused = str(exc)
print(json.dumps({{"sizes": sizes, "refused": refused}}))
"""


@pytest.mark.parametrize(("first", "expected"), [("", DEFAULT_THREADS),
                                                 ("tensorflow_threads(3)", 3)],
                         ids=["on-import", "set-before-import"])
def test_tensorflow_pools_are_sized_once_and_never_silently_resized(first, expected):
    """Importing the Keras trainer gives TensorFlow the default count unless a run set one
    first; once TensorFlow started, another count is refused with a clear message."""
    report = _subprocess_run(TENSORFLOW_POOLS.format(first=first))
    assert report["sizes"] == [expected, expected]
    assert report["refused"].startswith(
        f"this run needs TensorFlow with {expected + 1} threads (runtime.threads_per_client")
    assert f"was started with {expected} intra-op threads" in report["refused"]


def test_keras_inline_needs_one_count_for_clients_and_server(tmp_path, capsys):
    """Inline, Keras clients and server share TensorFlow's one pool: two counts are a config
    error (exit code 2, nothing written), found before TensorFlow is touched."""
    out = tmp_path / "results"
    code = main(["run", str(ROOT / "configs" / "quickstart.toml"), "--set", "framework=keras",
                 "--set", "runtime.server_threads=2", "--set", f"output.dir={out}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "runtime.server_threads = 2 differs from runtime.threads_per_client = 1" in err
    assert "backend = 'ray'" in err
    assert not out.exists()


def test_openmp_threads_sleep_when_idle_unless_the_environment_says_otherwise():
    """A run's imports set OMP_WAIT_POLICY=PASSIVE before torch loads OpenMP (spinning idle
    teams made 2-thread clients many times slower on a shared machine); a value the user
    set is kept, and torch imported first gets one warning at a count above 1."""
    probe = ("import os, sandbox, clients.threads as t; from sandbox.engine import api; "
             "import torch; print(t._POLICY_TOO_LATE, os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = functools.partial(subprocess.run, capture_output=True, text=True, check=True,
                            cwd=ROOT)
    assert run([sys.executable, "-c", probe], env=env).stdout.split() == ["False", "PASSIVE"]
    kept = run([sys.executable, "-c", probe], env=env | {"OMP_WAIT_POLICY": "ACTIVE"})
    assert kept.stdout.split() == ["False", "ACTIVE"]
    late = ("import torch, logging; logging.basicConfig(); "
            "from clients.threads import framework_threads\n"
            "for _ in range(2):\n"
            "    with framework_threads('torch', 2): pass\n"
            "with framework_threads('torch', 1): pass")
    warned = run([sys.executable, "-c", late], env=env).stderr
    assert warned.count("torch was imported before fedsandbox") == 1, warned
