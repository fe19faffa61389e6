"""backend = "ray" on an existing Ray cluster (ray.address): a local `ray start --head`
on 127.0.0.1 and a free port, started and stopped by the test (only its own processes)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import sandbox
from sandbox.core.errors import SandboxError
from sandbox.engine.runtime.superlink import descendants, free_port, stop_tree
from tests.conftest import ROOT, small_overrides
from tests.test_runtime import RUN_AND_REPORT, _subprocess_run, assert_same_history


@pytest.fixture
def ray_cluster():
    """``host:port`` of a Ray head with 2 CPUs; every process of it is stopped after."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
         f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        _wait_for_cluster(address, head)
        yield address
    finally:
        stop_tree(head)
        leftover = descendants(head.pid)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
    assert leftover == []


def _wait_for_cluster(address: str, head: subprocess.Popen) -> None:
    ray = str(Path(sys.executable).with_name("ray"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        status = subprocess.run([ray, "status", f"--address={address}"],
                                capture_output=True, text=True, check=False)
        if status.returncode == 0:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the Ray head at {address} did not come up")


def test_ray_cluster_run_matches_inline_and_leaves_the_cluster_up(tmp_path, ray_cluster):
    """The run joins the cluster (1 CPU per client, no GPU), gives the inline metrics bit
    for bit, and disconnects without stopping the cluster."""
    extra = {"rounds": 2, "data.num_clients": 3, "backend": "ray",
             "ray.address": ray_cluster, "ray.num_cpus_per_client": 1.0,
             "ray.num_gpus_per_client": 0.0}
    ray = _subprocess_run(RUN_AND_REPORT.format(tmp=str(tmp_path), extra=extra))
    inline = sandbox.run(sandbox.load_config(
        ROOT / "configs" / "quickstart.toml",
        small_overrides(tmp_path, **extra | {"backend": "inline", "ray.address": ""})))
    assert_same_history(inline.rounds, ray["rounds"], atol=0)
    status = subprocess.run([str(Path(sys.executable).with_name("ray")), "status",
                             f"--address={ray_cluster}"], capture_output=True, check=False)
    assert status.returncode == 0, "the run stopped the cluster it joined"


def test_resume_is_refused_on_ray_with_a_reason(tmp_path):
    from sandbox.engine.api import resume

    run_dir = tmp_path / "x.partial"
    run_dir.mkdir()
    cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                              small_overrides(tmp_path, backend="ray"))
    (run_dir / "config.toml").write_text(cfg.to_toml())
    with pytest.raises(SandboxError, match="backend 'ray'"):
        resume(run_dir)
