"""Both trainers behind one protocol: they learn, and they agree with each other."""

from __future__ import annotations

import numpy as np
import pytest

from clients.schedule import PAD, batch_schedule
from clients.trainer import get_trainer
from sandbox.core.config import DataConfig, ModelConfig, TrainConfig
from sandbox.core.data import load_federated_data
from sandbox.core.models import ModelSpec

FRAMEWORKS = ["torch", "keras"]


def make_trainer(framework: str, spec: ModelSpec, cfg: TrainConfig):
    if framework == "torch":
        from clients.torch_trainer import TorchTrainer

        return TorchTrainer(spec, cfg)
    from clients.keras_trainer import KerasTrainer

    return KerasTrainer(spec, cfg)


@pytest.fixture(scope="module")
def digits():
    data = load_federated_data(DataConfig(num_clients=1, partitioner="iid"), 0)
    return data.clients[0], (data.x_test, data.y_test)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_trainer_learns(framework, optimizer, digits):
    client, (x_test, y_test) = digits
    spec = ModelSpec.from_config(ModelConfig(arch="mlp"), (8, 8, 1), 10)
    cfg = TrainConfig(optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.005,
                      local_epochs=3)
    trainer = make_trainer(framework, spec, cfg)
    trainer.set_weights(spec.init_weights(0))
    before = trainer.evaluate(x_test, y_test)
    schedule = batch_schedule(len(client.y_train), cfg, np.random.default_rng(0))
    loss = trainer.fit(client.x_train, client.y_train, schedule, seed=0)
    after = trainer.evaluate(x_test, y_test)
    assert np.isfinite(loss)
    assert after[0] < before[0] and after[1] > 0.8


@pytest.mark.parametrize("budget", ["steps", "epochs"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_torch_and_keras_take_the_same_steps(arch, budget, digits):
    """Same schedule, same steps; ``epochs``: 90 examples in batches of 16, so each of the
    two epochs ends with a partial batch of 10 (padded rows)."""
    client, _ = digits
    spec = ModelSpec.from_config(ModelConfig(arch=arch), (8, 8, 1), 10)
    if budget == "steps":
        cfg = TrainConfig(lr=0.05, momentum=0.9, local_steps=10, batch_size=16)
        x, y = client.x_train, client.y_train
    else:
        cfg = TrainConfig(lr=0.05, momentum=0.9, local_epochs=2, batch_size=16)
        x, y = client.x_train[:90], client.y_train[:90]
    schedule = batch_schedule(len(y), cfg, np.random.default_rng(5))
    if budget == "epochs":
        assert ((schedule != PAD).sum(axis=1) == [16] * 5 + [10] + [16] * 5 + [10]).all()
    results = []
    for framework in FRAMEWORKS:
        trainer = make_trainer(framework, spec, cfg)
        trainer.set_weights(spec.init_weights(1))
        loss = trainer.fit(x, y, schedule, seed=0)
        results.append((loss, trainer.get_weights()))
    (torch_loss, torch_w), (keras_loss, keras_w) = results
    assert torch_loss == pytest.approx(keras_loss, rel=1e-4)
    for a, b in zip(torch_w, keras_w, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_fit_is_reproducible_and_resets_optimizer(framework, digits):
    client, _ = digits
    spec = ModelSpec.from_config(ModelConfig(arch="mlp", dropout=0.2), (8, 8, 1), 10)
    cfg = TrainConfig(optimizer="adam", lr=0.01, local_steps=5)
    schedule = batch_schedule(len(client.y_train), cfg, np.random.default_rng(0))
    trainer = make_trainer(framework, spec, cfg)
    runs = []
    for _ in range(2):
        trainer.set_weights(spec.init_weights(0))
        trainer.fit(client.x_train, client.y_train, schedule, seed=11)
        runs.append(trainer.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("mu", [0.0, 2.0])
def test_a_padded_batch_is_the_batch_without_its_padding(framework, mu, digits):
    """Padded entries change nothing: the step's loss is the mean over the real examples
    (Keras keeps one step shape by gathering a safe index with weight 0)."""
    client, _ = digits
    spec = ModelSpec.from_config(ModelConfig(arch="cnn", channels=[4]), (8, 8, 1), 10)
    cfg = TrainConfig(lr=0.3, local_steps=1, batch_size=8)
    trainer = make_trainer(framework, spec, cfg)
    results = []
    for schedule in ([[3, 1, 4, 5, 9, PAD, PAD, PAD]], [[3, 1, 4, 5, 9]]):
        trainer.set_weights(spec.init_weights(2))
        loss = trainer.fit(client.x_train, client.y_train, np.array(schedule), seed=0,
                           proximal_mu=mu)
        results.append((loss, trainer.get_weights()))
    (padded_loss, padded), (loss, unpadded) = results
    assert padded_loss == pytest.approx(loss, rel=1e-6)
    for a, b in zip(padded, unpadded, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    moved = sum(float(np.abs(a - b).sum()) for a, b in zip(padded, spec.init_weights(2),
                                                           strict=True))
    assert moved > 1e-3  # the step did something


def test_torch_and_keras_dp_sgd_agree_on_partial_batches(digits):
    """DP-SGD on shuffled fixed-size batches (``privacy.sample.poisson = false``): the
    partial last batch of each epoch is normalized by the expected batch like the others;
    without noise, both frameworks take the same steps and report the same loss."""
    from sandbox.core.privacy import SampleDPPlan

    client, _ = digits
    x, y = client.x_train[:45], client.y_train[:45]
    spec = ModelSpec.from_config(ModelConfig(arch="mlp", hidden=[16]), (8, 8, 1), 10)
    cfg = TrainConfig(lr=0.5, local_epochs=2, batch_size=10)
    schedule = batch_schedule(len(y), cfg, np.random.default_rng(1))
    assert (schedule == PAD).sum() == 2 * 5
    plan = SampleDPPlan(0.0, 0.4, 10 / 45, 10, len(schedule), False)
    results = []
    for framework in FRAMEWORKS:
        trainer = get_trainer(framework, spec, cfg, private=True)
        trainer.set_weights(spec.init_weights(5))
        loss = trainer.fit(x, y, schedule, seed=0, dp=plan)
        results.append((loss, trainer.get_weights()))
    (torch_loss, torch_w), (keras_loss, keras_w) = results
    assert torch_loss == pytest.approx(keras_loss, rel=1e-5)
    for a, b in zip(torch_w, keras_w, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_fedprox_proximal_term_pulls_towards_the_round_start(digits):
    """Both frameworks add (mu/2)||w - w_start||^2 identically; larger mu stays closer."""
    client, _ = digits
    spec = ModelSpec.from_config(ModelConfig(arch="mlp"), (8, 8, 1), 10)
    cfg = TrainConfig(lr=0.1, local_steps=20, batch_size=16)
    schedule = batch_schedule(len(client.y_train), cfg, np.random.default_rng(2))
    start = spec.init_weights(4)
    drift = {}
    for framework in FRAMEWORKS:
        trainer = make_trainer(framework, spec, cfg)
        for mu in (0.0, 5.0):
            trainer.set_weights(start)
            loss = trainer.fit(client.x_train, client.y_train, schedule, seed=0,
                               proximal_mu=mu)
            weights = trainer.get_weights()
            drift[framework, mu] = (weights, sum(float(np.sum((w - s) ** 2))
                                                 for w, s in zip(weights, start, strict=True)),
                                    loss)
    for framework in FRAMEWORKS:
        assert drift[framework, 5.0][1] < 0.8 * drift[framework, 0.0][1]
    # the reported loss is the data loss, without the proximal term, in both frameworks
    assert drift["torch", 5.0][2] == pytest.approx(drift["keras", 5.0][2], rel=1e-4)
    for a, b in zip(drift["torch", 5.0][0], drift["keras", 5.0][0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("private", [False, True], ids=["plain", "dp_sgd"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_scaffold_correction_shifts_a_step_by_lr_times_c_minus_ci(framework, private, digits):
    """Hand-checked: one SGD step with correction v = c - c_i is w - lr (g + v), i.e. the
    uncorrected step minus lr v. Under DP-SGD (seeded noise, the same in both calls) v is
    added to the clipped and noised gradient, so the identity holds there too (added
    before clipping, it would be clipped away or overwritten)."""
    from sandbox.core.privacy import SampleDPPlan

    client, _ = digits
    x, y = client.x_train[:40], client.y_train[:40]
    spec = ModelSpec.from_config(ModelConfig(arch="mlp", hidden=[8]), (8, 8, 1), 10)
    cfg = TrainConfig(lr=0.1, local_steps=1, batch_size=16)
    schedule = batch_schedule(len(y), cfg, np.random.default_rng(3))
    plan = SampleDPPlan(1.0, 0.5, 16 / 40, 16, 1, False) if private else None
    rng = np.random.default_rng(4)
    correction = [rng.normal(0, 1, shape).astype(np.float32) for _, shape in
                  spec.weight_shapes()]
    trainer = get_trainer(framework, spec, cfg, private=private)
    weights = {}
    for name, offset in (("plain", None), ("corrected", correction)):
        trainer.set_weights(spec.init_weights(5))
        trainer.fit(x, y, schedule, seed=7, dp=plan, correction=offset)
        weights[name] = trainer.get_weights()
    for plain, corrected, v in zip(weights["plain"], weights["corrected"], correction,
                                   strict=True):
        np.testing.assert_allclose(corrected, plain - 0.1 * v, atol=2e-6)
    # no correction afterwards: the trainer forgets it
    trainer.set_weights(spec.init_weights(5))
    trainer.fit(x, y, schedule, seed=7, dp=plan)
    for a, b in zip(trainer.get_weights(), weights["plain"], strict=True):
        np.testing.assert_array_equal(a, b)


def _train_message(grid, partition_id: int, weights, control=None, server_round: int = 1,
                   **config):
    from flwr.app import ConfigRecord, MessageType, RecordDict

    from sandbox.core import wire
    from sandbox.engine.runtime.inline import FIRST_NODE_ID

    content = RecordDict({wire.ARRAYS: wire.to_record(weights), wire.CONFIG: ConfigRecord(
        {wire.SERVER_ROUND: server_round, **config})})
    if control is not None:
        content[wire.SERVER_CONTROL] = wire.to_record(control)
    (reply,) = grid.send_and_receive([grid.create_message(
        content, MessageType.TRAIN, FIRST_NODE_ID + partition_id, "")])
    assert not reply.has_error(), reply.error.reason
    return reply


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_scaffold_client_control_variate_option_ii(framework, small):
    """Hand-checked with one SGD step (K = 1, lr eta) from x:
    round A (c_i = 0, server c = v1): c_i+ = -v1 + (x - y)/eta = g (the batch gradient),
    the reply's delta is g and c_i = g is kept in the node's state;
    round A again from x with c = v2: the correction v2 - g cancels the gradient, so
    y = x - eta v2 exactly, and c_i+ = g - v2 + v2 = g: delta 0."""
    from flwr.supercore.task_identity import TaskIdentity

    from clients import make_client_app
    from sandbox.core import wire
    from sandbox.engine.runtime.inline import InlineGrid

    cfg = small(framework=framework, **{"train.local_steps": 1, "train.local_epochs": None,
                                        "train.momentum": 0.0, "train.lr": 0.1})
    spec = wire.model_spec_for(cfg)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    grid = InlineGrid(make_client_app(cfg), 2, run_id=1)
    try:
        _check_option_ii(grid, spec)
    finally:
        if hasattr(grid, "close"):  # a grid with a worker thread releases it
            grid.close()


def _check_option_ii(grid, spec) -> None:
    from clients.scaffold import STATE_KEY
    from sandbox.core import wire
    from sandbox.engine.runtime.inline import FIRST_NODE_ID

    x = spec.init_weights(1)
    rng = np.random.default_rng(0)
    v1, v2 = ([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in x] for _ in range(2))
    first = _train_message(grid, 1, x, v1)
    y1 = wire.record_to_arrays(spec, first.content[wire.ARRAYS])
    delta1 = wire.record_to_arrays(spec, first.content[wire.CONTROL_DELTA])
    gradient = [(a - b) / 0.1 - c for a, b, c in zip(x, y1, v1, strict=True)]
    stored = wire.record_to_arrays(spec, grid.node_context(FIRST_NODE_ID + 1).state[STATE_KEY])
    for d, g, s in zip(delta1, gradient, stored, strict=True):
        np.testing.assert_allclose(d, g, atol=1e-4)
        np.testing.assert_array_equal(s, d)
    second = _train_message(grid, 1, x, v2)
    y2 = wire.record_to_arrays(spec, second.content[wire.ARRAYS])
    for a, b, c in zip(y2, x, v2, strict=True):
        np.testing.assert_allclose(a, b - 0.1 * c, atol=1e-5)
    for d in wire.record_to_arrays(spec, second.content[wire.CONTROL_DELTA]):
        np.testing.assert_allclose(d, 0.0, atol=1e-4)
    assert int(second.content[wire.METRICS][wire.LOCAL_STEPS]) == 1


@pytest.mark.parametrize("framework", ["torch", "keras", "mixed"])
def test_a_train_reply_reports_compute_identity_and_the_pre_training_loss(framework, small):
    """Every reply: examples, loss, steps (tau), FedNova's ||a||_1 for momentum 0.9,
    examples processed, Keras or not, malicious or not, partition; q-FFL's pre-training
    loss (of the received model on the training split) only when asked."""
    from flwr.supercore.task_identity import TaskIdentity

    from clients import make_client_app
    from clients.schedule import normalized_steps
    from sandbox.core import wire
    from sandbox.core.assignment import client_framework
    from sandbox.core.experiment import load_experiment_data
    from sandbox.engine.runtime.inline import InlineGrid

    extra = {"train.batch_size": 8}
    if framework == "mixed":
        extra["mixed.keras_partitions"] = [1]
    cfg = small(framework=framework, **extra)
    spec = wire.model_spec_for(cfg)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    grid = InlineGrid(make_client_app(cfg), 4, run_id=1)
    start = spec.init_weights(2)
    try:
        asked = _train_message(grid, 1, start, **{wire.REPORT_PRE_TRAIN_LOSS: True})
        plain = _train_message(grid, 1, start)
    finally:
        if hasattr(grid, "close"):
            grid.close()
    data = load_experiment_data(cfg).clients[1]
    n = len(data.y_train)
    steps = cfg.train.local_epochs * -(-n // 8)
    metrics = asked.content[wire.METRICS]
    assert metrics[wire.NUM_EXAMPLES] == n and metrics[wire.PARTITION_ID] == 1
    assert metrics[wire.LOCAL_STEPS] == steps and metrics[wire.LOCAL_EXAMPLES] == 2 * n
    assert metrics[wire.NORMALIZED_STEPS] == pytest.approx(normalized_steps(cfg.train, steps))
    assert metrics[wire.NORMALIZED_STEPS] > steps  # momentum 0.9 (the quickstart's)
    assert metrics[wire.KERAS_CLIENT] == float(client_framework(cfg, 1) == "keras")
    assert metrics[wire.MALICIOUS] == 0.0 and wire.TRAIN_LOSS in metrics
    evaluator = get_trainer(client_framework(cfg, 1), spec, cfg.train)
    evaluator.set_weights(start)
    assert metrics[wire.PRE_TRAIN_LOSS] == pytest.approx(
        evaluator.evaluate(data.x_train, data.y_train)[0], rel=1e-6)
    assert wire.PRE_TRAIN_LOSS not in plain.content[wire.METRICS]


@pytest.mark.parametrize("case", ["plain", "momentum", "fedprox", "scaffold", "dropout_cnn"])
def test_torch_sgd_steps_equal_torch_optim_sgd_bit_for_bit(case, digits):
    """The torch trainer's SGD update (clients.torch_trainer.sgd_update, no optimizer object)
    gives the weights of torch.optim.SGD's loop exactly: momentum, FedProx's proximal term,
    SCAFFOLD's correction and dropout included."""
    import torch

    from clients.torch_trainer import TorchTrainer, to_torch_layout

    client, _ = digits
    momentum = 0.9 if case in ("momentum", "scaffold") else 0.0
    model = (ModelConfig(arch="cnn", channels=[4], hidden=[16], dropout=0.3)
             if case == "dropout_cnn" else ModelConfig(arch="mlp", hidden=[16]))
    train = TrainConfig(lr=0.05, momentum=momentum, local_steps=7, batch_size=16)
    spec = ModelSpec.from_config(model, client.x_train.shape[1:], 10)
    start = spec.init_weights(3)
    schedule = batch_schedule(len(client.y_train), train, np.random.default_rng(1))
    mu = 0.1 if case == "fedprox" else 0.0
    rng = np.random.default_rng(2)
    correction = ([rng.normal(size=w.shape).astype(np.float32) for w in start]
                  if case == "scaffold" else None)
    trainer = TorchTrainer(spec, train)
    trainer.set_weights(start)
    trainer.fit(client.x_train, client.y_train, schedule, seed=5, proximal_mu=mu,
                correction=correction)
    ours = trainer.get_weights()

    reference = TorchTrainer(spec, train)
    reference.set_weights(start)
    module = reference.module
    params = list(module.parameters())
    offsets = ([torch.from_numpy(np.ascontiguousarray(to_torch_layout(c))) for c in correction]
               if correction else [])
    anchor = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=train.lr, momentum=train.momentum)
    torch.random.default_generator.manual_seed(5)
    module.train()
    x, y = torch.from_numpy(client.x_train), torch.from_numpy(client.y_train)
    for row in torch.from_numpy(schedule):
        idx = row[row != PAD]
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(module(x[idx]), y[idx])
        if mu:
            loss = loss + mu / 2 * sum((p - a).pow(2).sum()
                                       for p, a in zip(params, anchor, strict=True))
        loss.backward()
        for param, offset in zip(params, offsets, strict=False):  # none without SCAFFOLD
            param.grad.add_(offset)
        optimizer.step()
    for got, want in zip(ours, reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
