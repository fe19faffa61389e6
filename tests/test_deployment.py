"""backend = "deployment": the config under `flwr run` on a local SuperLink + SuperNodes.

Each ClientApp message runs in a fresh `flwr-clientapp` process on Flower's Deployment
Engine (seconds per message here), so the federations below are tiny: 2-3 clients, 2-3
rounds, MLP on digits.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from sandbox import load_config
from sandbox.core.errors import ConfigError, SandboxError
from tests.conftest import ROOT, small_overrides
from tests.test_runtime import assert_same_history

APP_FLWR = ROOT / ".flwr"


def flower_processes(home: Path = APP_FLWR) -> list[int]:
    """Live processes whose FLWR_HOME is under ``home`` (the repo's .flwr/: what runs start)."""
    marker = f"FLWR_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def deployment_config(tmp_path, **extra):
    overrides = small_overrides(tmp_path, **{"data.num_clients": 2, "rounds": 2,
                                             "backend": "deployment", **extra})
    return load_config(ROOT / "configs" / "quickstart.toml", overrides)


def test_run_config_gives_the_config_by_path_or_text(tmp_path):
    from sandbox.engine.flower_app import config_from_run_config

    by_path = config_from_run_config({"config": "configs/quickstart.toml",
                                      "set": "rounds=3; data.alpha=0.1"})
    assert (by_path.rounds, by_path.data.alpha, by_path.name) == (3, 0.1, "quickstart")
    cfg = deployment_config(tmp_path)
    by_text = config_from_run_config({"config": cfg.to_toml(), "run-dir": ""})
    assert by_text.config_hash() == cfg.config_hash()
    with pytest.raises(ConfigError, match="no 'config' key"):
        config_from_run_config({"set": ""})
    with pytest.raises(ConfigError, match="rounds"):
        config_from_run_config({"config": "configs/quickstart.toml", "set": "rounds=0"})


def test_deployment_over_tls_matches_inline(tmp_path):
    """Same config and seed: the deployment's rows equal inline's bit for bit, and the
    run directory has the same files; nothing the run started is left running. At 2
    threads per client and server (the kill test below compares at 1): the SuperNodes'
    ClientApp processes and the SuperExec's ServerApp take their counts from the config."""
    import sandbox

    cfg = deployment_config(tmp_path, **{"deployment.tls": True,
                                         "federation.fraction_evaluate": 0.5,
                                         "runtime.threads_per_client": 2,
                                         "runtime.server_threads": 2})
    deployed = sandbox.run(cfg)
    assert flower_processes() == []
    inline = sandbox.run(cfg.model_copy(update={"backend": "inline"}))
    assert_same_history(inline.rounds, deployed.rounds, atol=0)
    assert deployed.final["central_test_accuracy"] == inline.final["central_test_accuracy"]
    files = {p.name for p in inline.run_dir.iterdir()}
    assert {p.name for p in deployed.run_dir.iterdir()} == files
    assert (deployed.run_dir / "participation.json").read_text() == (
        inline.run_dir / "participation.json").read_text()
    assert not list(APP_FLWR.glob("run-*")), "the run's FLWR_HOME was not removed"


def _kill_after_first_train(local, partition_id: int, how: str, killed: threading.Event,
                            done: threading.Event) -> None:
    """Stop the SuperNode of ``partition_id`` once it has sent its first training reply:
    ``"stop"``: SIGTERM (it unregisters), ``"kill"``: SIGKILL to it and its children
    (it just stops beating)."""
    from sandbox.engine.runtime.superlink import descendants, stop_tree

    log = local.log_dir / f"supernode-{partition_id}.log"
    while not done.is_set():
        text = log.read_text(errors="replace") if log.is_file() else ""
        if re.search(r"Sending: train message.*Sent successfully", text, re.DOTALL):
            node = local.supernodes[partition_id]
            if how == "stop":
                stop_tree(node)
            else:
                for pid in [node.pid, *descendants(node.pid)]:
                    os.kill(pid, signal.SIGKILL)
                node.wait()
            killed.set()
            return
        time.sleep(0.2)


# 1-2 min each (3 SuperNodes, a process per message): SIGKILL runs in CI, SIGTERM is slow
@pytest.mark.parametrize("how", [pytest.param("stop", marks=pytest.mark.slow), "kill"])
def test_killed_supernode_is_a_counted_failure_and_the_run_finishes(tmp_path, how):
    """A SuperNode stopped (SIGTERM: the SuperLink refuses its messages) or killed
    (SIGKILL: the SuperLink answers "Node Unavailable" once its heartbeat is missed)
    after its round-1 reply: rounds 2-3 finish with the other two clients and count its
    failure, as on the other backends (here on an existing deployment reached through
    deployment.superlink). Rounds 0-1 equal inline's at 1 thread, bit for bit."""
    import sandbox
    from sandbox.engine.runtime.superlink import LocalDeployment

    killed, done = threading.Event(), threading.Event()
    with LocalDeployment(3, home=tmp_path / "flwr-home", log_dir=tmp_path / "logs") as local:
        cfg = deployment_config(tmp_path, **{
            "data.num_clients": 3, "rounds": 3, "federation.fraction_evaluate": 0.0,
            "deployment.superlink": local.address})
        watcher = threading.Thread(target=_kill_after_first_train,
                                   args=(local, 2, how, killed, done))
        watcher.start()
        try:
            result = sandbox.run(cfg)
        finally:
            done.set()
            watcher.join()
    assert killed.is_set()
    assert [r["train_failures"] for r in result.rounds] == [None, 0, 1, 1]
    for row in result.rounds[2:]:
        assert list(row["failures"]["train"]) == ["2"]
        assert row["train_partitions"] == [0, 1]
    assert result.final["central_val_accuracy"] > 0.5
    inline = sandbox.run(cfg.model_copy(update={"backend": "inline", "rounds": 1}))
    assert_same_history(inline.rounds, result.rounds[:2], atol=0)
    assert flower_processes() == flower_processes(tmp_path / "flwr-home") == []


def test_resume_is_refused_on_deployment_with_a_reason(tmp_path):
    from sandbox.engine.api import resume

    run_dir = tmp_path / "x.partial"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text(deployment_config(tmp_path).to_toml())
    with pytest.raises(SandboxError, match="backend 'deployment'"):
        resume(run_dir)


def test_round_callbacks_are_refused_on_deployment_before_anything_is_written(tmp_path):
    import sandbox

    cfg = deployment_config(tmp_path)
    with pytest.raises(SandboxError, match="round callbacks"):
        sandbox.run(cfg, callbacks=[lambda r, row: None])
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_superlink_error_replies_are_attributed_to_the_node_asked():
    """Both ways the SuperLink answers for a gone node end as an error from that node: a
    killed node's message gets a "Node Unavailable" reply sent by the SuperLink itself
    (node id 1), a stopped (unregistered) node's message is refused at push time (an
    empty id; Flower's own loop then pulls a "Message Unavailable" error naming no
    message)."""
    from flwr.app import ConfigRecord, Error, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from sandbox.engine.flower_app import NodeAttributedGrid
    from sandbox.engine.runtime.inline import InlineGrid

    killed, stopped = 1000, 1001

    class GoneNodes(InlineGrid):
        pulls = 0

        def push_messages(self, messages):
            ids = []
            for number, msg in enumerate(messages):
                msg.metadata.__dict__["_message_id"] = f"m{number}"
                ids.append("" if msg.metadata.dst_node_id == stopped else f"m{number}")
            return ids

        def pull_messages(self, message_ids, *, timeout=None):
            self.pulls += 1
            assert "" not in message_ids
            if self.pulls == 1:  # the reply is not there yet
                return []
            replies = []
            for message_id in message_ids:
                stand_in = Message(RecordDict(), dst_node_id=SUPERLINK_NODE_ID,
                                   message_type="train")
                stand_in.metadata.__dict__["_message_id"] = message_id
                replies.append(Message(Error(5, "Node Unavailable"), reply_to=stand_in))
            return replies

    TaskIdentity.task_id, TaskIdentity.run_id = 1, 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    inner = GoneNodes(client_app=None, num_nodes=2, run_id=1)
    grid = NodeAttributedGrid(inner)
    grid.POLL_S = 0.0
    asked = [Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node,
                     message_type="train") for node in (killed, stopped)]
    replies = grid.send_and_receive(asked, timeout=60)
    assert sorted(r.metadata.src_node_id for r in replies) == [killed, stopped]
    assert all(r.has_error() and "Node Unavailable" in r.error.reason for r in replies)
    assert inner.pulls == 2
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
