"""The Flower ``ClientApp`` every backend runs (inline Grid, Ray simulation, Deployment Engine).

A node finds its data shard from ``context.node_config["partition-id"]`` and rebuilds the
federation from the config (seeded, cached per process), so the app carries only the
config and works unchanged in any process that Flower starts it in. Message contents
follow the wire protocol (:mod:`sandbox.core.wire`). Per-node bookkeeping (rounds and
steps trained, the DP accountant) lives in ``context.state`` and so persists across rounds.
"""

from __future__ import annotations

import functools
import logging
import time

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.dp import account_round, client_mods
from clients.schedule import batch_schedule, client_randomness, poisson_schedule
from clients.threads import framework_threads
from clients.trainer import Trainer, get_trainer
from sandbox.core import wire
from sandbox.core.config import Config
from sandbox.core.data import ClientData
from sandbox.core.experiment import load_experiment_data
from sandbox.core.faults import InjectedFault, injected_delay, injected_failure
from sandbox.core.models import ModelSpec
from sandbox.core.privacy import sample_dp_plan

STATE_KEY = "client-progress"
#: Flower's error code for "the ClientApp raised" (flwr.common.constant.ErrorCode).
CLIENT_APP_RAISED_EXCEPTION = 2

logger = logging.getLogger(__name__)


def make_client_app(cfg: Config) -> ClientApp:
    """Build the ``ClientApp`` for experiment ``cfg``."""
    app = ClientApp()
    private = cfg.privacy.sample.enabled
    # privacy.secure_rng: DP-SGD noise and batch membership from the OS's CSPRNG (see
    # clients.schedule.SecureRandom); without sample-level DP there is neither.
    secure = private and cfg.privacy.secure_rng

    def local(context: Context) -> tuple[int, ClientData, ModelSpec, Trainer]:
        # Everything here is cached per process (the app itself must stay picklable).
        partition_id = int(context.node_config[wire.NODE_PARTITION_ID])
        data = load_experiment_data(cfg).clients[partition_id]
        spec = wire.model_spec_for(cfg)
        trainer = get_trainer(cfg.framework, spec, cfg.train, private=private)
        return partition_id, data, spec, trainer

    # Client-side clipping applies to training replies only (evaluate and query messages
    # carry no model update to clip).
    @app.train(mods=client_mods(cfg.privacy.client.mode))
    @with_client_threads(cfg)
    @failures_as_replies(cfg, "train")
    def train(msg: Message, context: Context) -> Message:
        partition_id, data, spec, trainer = local(context)
        trainer.set_weights(wire.record_to_arrays(spec, msg.content[wire.ARRAYS]))
        server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
        rng, framework_seed = client_randomness(cfg.seed, server_round, partition_id,
                                                secure=secure)
        n = len(data.y_train)
        metrics = MetricRecord({wire.NUM_EXAMPLES: n, wire.UNIT_WEIGHT: 1.0,
                                wire.PARTITION_ID: partition_id})
        if private:
            plan = sample_dp_plan(cfg, n)
            schedule = (poisson_schedule(n, plan.sample_rate, plan.steps, rng) if plan.poisson
                        else batch_schedule(n, cfg.train, rng))
            loss = trainer.fit(data.x_train, data.y_train, schedule, seed=framework_seed,
                               dp=plan, secure_rng=secure)
            metrics[wire.DP_EPSILON] = account_round(
                context, plan, method=cfg.privacy.accountant, delta=cfg.privacy.delta)
            metrics[wire.DP_NOISE_MULTIPLIER] = plan.noise_multiplier
        else:
            schedule = batch_schedule(n, cfg.train, rng)
            mu = float(msg.content[wire.CONFIG].get(wire.PROXIMAL_MU, 0.0))  # sent by FedProx
            loss = trainer.fit(data.x_train, data.y_train, schedule, seed=framework_seed,
                               proximal_mu=mu)
        _record_progress(context, steps=len(schedule))
        metrics[wire.TRAIN_LOSS] = loss
        content = RecordDict(
            {wire.ARRAYS: wire.to_record(trainer.get_weights()), wire.METRICS: metrics}
        )
        return Message(content, reply_to=msg)

    @app.query(wire.PARTITION_QUERY_ACTION)
    def partition(msg: Message, context: Context) -> Message:
        pid = int(context.node_config[wire.NODE_PARTITION_ID])
        return Message(RecordDict({wire.METRICS: MetricRecord({wire.PARTITION_ID: pid})}),
                       reply_to=msg)

    @app.evaluate()
    @with_client_threads(cfg)
    @failures_as_replies(cfg, "evaluate")
    def evaluate(msg: Message, context: Context) -> Message:
        _, data, spec, trainer = local(context)
        trainer.set_weights(wire.record_to_arrays(spec, msg.content[wire.ARRAYS]))
        loss, accuracy = trainer.evaluate(data.x_val, data.y_val)
        metrics = MetricRecord(
            {wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: accuracy,
             wire.NUM_EXAMPLES: len(data.y_val), wire.UNIT_WEIGHT: 1.0}
        )
        return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)

    return app


def with_client_threads(cfg: Config):
    """Decorator: the handler's framework ops run on ``runtime.threads_per_client`` threads.

    Applied in the thread that handles the message, whichever backend started it (torch
    keeps its count per thread; see :mod:`clients.threads`). It sits outside
    :func:`failures_as_replies`, so a process that cannot give TensorFlow the configured
    count raises ``ThreadsUnavailable`` rather than counting as an ordinary client failure.
    """

    def decorate(handler):
        @functools.wraps(handler)
        def wrapped(msg: Message, context: Context) -> Message:
            with framework_threads(cfg.framework, cfg.runtime.threads_per_client):
                return handler(msg, context)

        return wrapped

    return decorate


def failures_as_replies(cfg: Config, purpose: str):
    """Decorator: a handler that raises replies with a Flower error message instead.

    The reason is ``"<ExceptionType>: <message>"`` on every backend (Flower's runtimes
    would each format it their own way), so the server records failures as data.
    Injected faults (``[faults]``, seeded per round and partition) happen here too.
    """

    def decorate(handler):
        @functools.wraps(handler)
        def wrapped(msg: Message, context: Context) -> Message:
            pid = int(context.node_config[wire.NODE_PARTITION_ID])
            try:
                server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
                delay = injected_delay(cfg, pid)
                if delay:
                    time.sleep(delay)
                why = injected_failure(cfg, server_round, pid, purpose)
                if why is not None:
                    raise InjectedFault(why)
                return handler(msg, context)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a reply
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                if not isinstance(exc, InjectedFault):
                    logger.warning("client %d failed its %s message: %s", pid, purpose,
                                   reason, exc_info=logger.isEnabledFor(logging.DEBUG))
                return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                               reply_to=msg)

        return wrapped

    return decorate


def _record_progress(context: Context, *, steps: int) -> None:
    if STATE_KEY not in context.state:
        context.state[STATE_KEY] = MetricRecord({"rounds": 0, "steps": 0})
    progress = context.state[STATE_KEY]
    progress["rounds"] = int(progress["rounds"]) + 1
    progress["steps"] = int(progress["steps"]) + steps
