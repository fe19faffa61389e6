"""The Flower ``ClientApp`` every backend runs (inline Grid, Ray simulation, Deployment Engine).

A node finds its data shard from ``context.node_config["partition-id"]`` and rebuilds the
federation from the config (seeded, cached per process), so the app carries only the
config and works unchanged in any process that Flower starts it in.

Replies: ``train`` -> ``{"arrays": ArrayRecord, "metrics": MetricRecord}`` with
``num-examples`` (FedAvg's weighting key), ``unit-weight`` (the key for equal weights under
client-level DP), ``partition-id`` (for the server's privacy ledger), ``train_loss`` and,
with sample-level DP, ``dp_epsilon`` / ``dp_noise_multiplier`` from the node's own
accountant (``clients.dp``); ``evaluate`` ->
``{"metrics": MetricRecord}`` with ``num-examples``, ``eval_loss``, ``eval_accuracy``
on the client's local test split. Per-node bookkeeping (rounds and steps trained) lives
in ``context.state`` and so persists across rounds.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.trainer import Trainer, batch_schedule, get_trainer, poisson_schedule
from clients.wire import from_record, to_record
from sandbox.config import Config
from sandbox.data import ClientData, load_experiment_data, load_federated_data
from sandbox.models import ModelSpec
from sandbox.privacy import sample_dp_plan
from strategies.privacy import PARTITION_KEY, UNIFORM_WEIGHT_KEY, client_mods

STATE_KEY = "client-progress"


def model_spec_for(cfg: Config) -> ModelSpec:
    data = load_federated_data(cfg.data, cfg.seed)
    return ModelSpec.from_config(cfg.model, data.input_shape, data.num_classes)


def record_to_arrays(spec: ModelSpec, record: ArrayRecord) -> list[np.ndarray]:
    return from_record(record, [shape for _, shape in spec.weight_shapes()])


def client_randomness(
    seed: int, server_round: int, partition_id: int
) -> tuple[np.random.Generator, int]:
    """Batch-order generator and framework seed (dropout) for one client in one round.

    Derived from (run seed, round, partition id) only, so it does not depend on message
    delivery order or on the backend.
    """
    sequence = np.random.SeedSequence([seed, server_round, partition_id])
    return np.random.default_rng(sequence), int(sequence.generate_state(1)[0] & 0x7FFFFFFF)


def make_client_app(cfg: Config) -> ClientApp:
    """Build the ``ClientApp`` for experiment ``cfg``."""
    app = ClientApp(mods=client_mods(cfg))
    private = cfg.privacy.sample.enabled

    def local(context: Context) -> tuple[int, ClientData, ModelSpec, Trainer]:
        # Everything here is cached per process (the app itself must stay picklable).
        partition_id = int(context.node_config["partition-id"])
        data = load_experiment_data(cfg).clients[partition_id]
        spec = model_spec_for(cfg)
        trainer = get_trainer(cfg.framework, spec, cfg.train, private=private)
        return partition_id, data, spec, trainer

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition_id, data, spec, trainer = local(context)
        trainer.set_weights(record_to_arrays(spec, msg.content["arrays"]))
        server_round = int(msg.content["config"]["server-round"])
        rng, framework_seed = client_randomness(cfg.seed, server_round, partition_id)
        n = len(data.y_train)
        metrics = MetricRecord({"num-examples": n, UNIFORM_WEIGHT_KEY: 1.0,
                                PARTITION_KEY: partition_id})
        if private:
            plan = sample_dp_plan(cfg, n)
            schedule = (poisson_schedule(n, plan.sample_rate, plan.steps, rng) if plan.poisson
                        else batch_schedule(n, cfg.train, rng))
            loss = trainer.fit(data.x_train, data.y_train, schedule, seed=framework_seed,
                               dp=plan)
            from clients.dp import account_round

            metrics["dp_epsilon"] = account_round(
                context, plan, method=cfg.privacy.accountant, delta=cfg.privacy.delta)
            metrics["dp_noise_multiplier"] = plan.noise_multiplier
        else:
            schedule = batch_schedule(n, cfg.train, rng)
            mu = float(msg.content["config"].get("proximal-mu", 0.0))  # sent by FedProx
            loss = trainer.fit(data.x_train, data.y_train, schedule, seed=framework_seed,
                               proximal_mu=mu)
        _record_progress(context, steps=len(schedule))
        metrics["train_loss"] = loss
        content = RecordDict(
            {"arrays": to_record(trainer.get_weights()), "metrics": metrics}
        )
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, data, spec, trainer = local(context)
        trainer.set_weights(record_to_arrays(spec, msg.content["arrays"]))
        loss, accuracy = trainer.evaluate(data.x_test, data.y_test)
        metrics = MetricRecord(
            {"eval_loss": loss, "eval_accuracy": accuracy, "num-examples": len(data.y_test),
             UNIFORM_WEIGHT_KEY: 1.0}
        )
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def _record_progress(context: Context, *, steps: int) -> None:
    if STATE_KEY not in context.state:
        context.state[STATE_KEY] = MetricRecord({"rounds": 0, "steps": 0})
    progress = context.state[STATE_KEY]
    progress["rounds"] = int(progress["rounds"]) + 1
    progress["steps"] = int(progress["steps"]) + steps
