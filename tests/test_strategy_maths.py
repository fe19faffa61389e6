"""Our strategies' aggregation maths against small hand-computed cases, and the strategies
themselves on hand-made client replies (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from sandbox.core import wire
from strategies.aggregation import fednova_update, scaffold_update


def arrays(*values) -> list[np.ndarray]:
    return [np.asarray(v, np.float32) for v in values]


def test_scaffold_server_step_by_hand():
    """x=[1,2], y=[0,2],[2,4]: mean(y - x) = [0,1]; c moves by |S|/N = 2/4 of mean dc."""
    x, c = arrays([1, 2]), arrays([0, 0])
    ys = [arrays([0, 2]), arrays([2, 4])]
    deltas = [arrays([1, 1]), arrays([3, -1])]
    new_x, new_c = scaffold_update(x, ys, c, deltas, server_lr=1.0, num_clients=4)
    np.testing.assert_array_equal(new_x[0], [1, 3])
    np.testing.assert_array_equal(new_c[0], [1, 0])
    half, _ = scaffold_update(x, ys, c, deltas, server_lr=0.5, num_clients=4)
    np.testing.assert_array_equal(half[0], [1, 2.5])
    assert new_x[0].dtype == new_c[0].dtype == np.float32


def test_scaffold_keeps_layers_apart():
    x = arrays([[1.0, 1.0]], [2.0])
    new_x, new_c = scaffold_update(x, [arrays([[3, 1]], [0])], arrays([[0, 0]], [1]),
                                   [arrays([[2, 2]], [4])], server_lr=1.0, num_clients=2)
    np.testing.assert_array_equal(new_x[0], [[3, 1]])
    np.testing.assert_array_equal(new_x[1], [0])
    np.testing.assert_array_equal(new_c[0], [[1, 1]])  # 0 + 1/2 * 2
    np.testing.assert_array_equal(new_c[1], [3])  # 1 + 1/2 * 4


def test_fednova_by_hand():
    """p = [1/4, 3/4], d = [1, 2], tau_eff = 2.75: x = -2.75 * 1.75 = -4.8125."""
    new = fednova_update(arrays([0]), [arrays([-2]), arrays([-6])], [1, 3], [2, 3])
    np.testing.assert_array_equal(new[0], [-4.8125])


def test_fednova_with_equal_steps_is_fedavg():
    ys = [arrays([-2, 1]), arrays([-6, 5])]
    new = fednova_update(arrays([0, 0]), ys, [1, 3], [2, 2])
    np.testing.assert_allclose(new[0], 0.25 * ys[0][0] + 0.75 * ys[1][0], rtol=1e-7)


@pytest.mark.parametrize(("n", "a"), [([1, 0], [1, 1]), ([1, 1], [1, 0]), ([1], [1, 1])])
def test_fednova_refuses_what_it_cannot_weight(n, a):
    with pytest.raises(ValueError, match="FedNova needs|every local model"):
        fednova_update(arrays([0]), [arrays([1]), arrays([2])], n, a)


# -- the strategies on hand-made replies --------------------------------------------------
def _grid(handler, num_nodes: int = 2):
    """An inline grid whose nodes answer train messages with ``handler(pid, content)``."""
    from flwr.app import Message
    from flwr.clientapp import ClientApp
    from flwr.supercore.task_identity import TaskIdentity

    from sandbox.engine.runtime.inline import InlineGrid

    app = ClientApp()

    @app.train()
    def train(msg, context):
        pid = int(context.node_config[wire.NODE_PARTITION_ID])
        return Message(handler(pid, msg.content), reply_to=msg)

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    return InlineGrid(app, num_nodes, run_id=1)


def _round(strategy, grid, x, server_round=1):
    from flwr.app import ConfigRecord

    messages = list(strategy.configure_train(server_round, wire.to_record(x), ConfigRecord(),
                                             grid))
    replies = sorted(grid.send_and_receive(messages), key=lambda r: r.metadata.src_node_id)
    return messages, strategy.aggregate_train(server_round, replies)


def _metrics(pid, **extra):
    from flwr.app import MetricRecord

    return MetricRecord({wire.NUM_EXAMPLES: 1 + 2 * pid, wire.PARTITION_ID: pid,
                         wire.TRAIN_LOSS: 0.5, **extra})


def _build(name, **args):
    import strategies
    from sandbox.core.config import FederationConfig, TrainConfig

    fed = FederationConfig(strategy=name, strategy_args=args)
    return strategies.build_strategy(fed, 4, weighted_by_key=wire.NUM_EXAMPLES,
                                     train=TrainConfig(lr=0.5))


def test_scaffold_strategy_sends_c_and_applies_the_paper_step():
    from flwr.app import RecordDict

    seen = {}
    local = {0: arrays([0, 2]), 1: arrays([2, 4])}
    delta = {0: arrays([1, 1]), 1: arrays([3, -1])}

    def reply(pid, content):
        seen[pid] = wire.from_record(content[wire.SERVER_CONTROL], [(2,)])[0]
        return RecordDict({wire.ARRAYS: wire.to_record(local[pid]),
                           wire.CONTROL_DELTA: wire.to_record(delta[pid]),
                           wire.METRICS: _metrics(pid)})

    strategy, grid = _build("scaffold"), _grid(reply)
    _, (new, _) = _round(strategy, grid, arrays([1, 2]))
    np.testing.assert_array_equal(wire.from_record(new, [(2,)])[0], [1, 3])
    assert {pid: c.tolist() for pid, c in seen.items()} == {0: [0, 0], 1: [0, 0]}
    _round(strategy, grid, arrays([1, 3]), server_round=2)  # c = 2/4 * mean(dc) = [1, 0]
    assert {pid: c.tolist() for pid, c in seen.items()} == {0: [1, 0], 1: [1, 0]}
    np.testing.assert_array_equal(strategy.control[0], [2, 0])


def test_scaffold_strategy_names_a_reply_without_control_delta():
    from flwr.app import RecordDict

    def reply(pid, content):
        return RecordDict({wire.ARRAYS: content[wire.ARRAYS], wire.METRICS: _metrics(pid)})

    with pytest.raises(RuntimeError, match="control-delta"):
        _round(_build("scaffold"), _grid(reply), arrays([1, 2]))


def test_fednova_strategy_weights_by_examples_and_normalized_steps():
    from flwr.app import RecordDict

    local, steps = {0: arrays([-2]), 1: arrays([-6])}, {0: 2.0, 1: 3.0}

    def reply(pid, content):  # n = 1, 3 (see _metrics)
        return RecordDict({wire.ARRAYS: wire.to_record(local[pid]), wire.METRICS: _metrics(
            pid, **{wire.NORMALIZED_STEPS: steps[pid], wire.LOCAL_STEPS: int(steps[pid])})})

    _, (new, metrics) = _round(_build("fednova"), _grid(reply), arrays([0]))
    np.testing.assert_array_equal(wire.from_record(new, [(1,)])[0], [-4.8125])
    assert metrics[wire.TRAIN_LOSS] == pytest.approx(0.5)


def test_qffl_asks_for_the_pre_training_loss_and_uses_it():
    """q = 0: h_k = L, delta_k = L (x - y_k): the new model is the mean of the y_k."""
    from flwr.app import RecordDict

    asked, local = {}, {0: arrays([2, 0]), 1: arrays([4, 2])}

    def reply(pid, content):
        asked[pid] = bool(content[wire.CONFIG].get(wire.REPORT_PRE_TRAIN_LOSS, False))
        return RecordDict({wire.ARRAYS: wire.to_record(local[pid]), wire.METRICS: _metrics(
            pid, **{wire.PRE_TRAIN_LOSS: 1.0 + pid})})

    strategy = _build("qfedavg", q=0.0)
    assert strategy.train_loss_key == wire.PRE_TRAIN_LOSS
    assert strategy.client_learning_rate == 0.5  # train.lr
    _, (new, _) = _round(strategy, _grid(reply), arrays([0, 0]))
    assert asked == {0: True, 1: True}
    flat = wire.from_record(new, [(2,)])[0]
    assert flat.dtype == np.float32
    np.testing.assert_allclose(flat, [3, 1], rtol=1e-6)
