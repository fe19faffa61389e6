"""The Flower ``ClientApp`` every backend runs (inline Grid, Ray simulation, Deployment Engine).

A node finds its data shard from ``context.node_config["partition-id"]`` and rebuilds the
federation from the config (seeded, cached per process), so the app carries only the
config and works unchanged in any process that Flower starts it in. Message contents
follow the wire protocol (:mod:`sandbox.core.wire`). Per-node bookkeeping (rounds and
steps trained, the DP accountant, SCAFFOLD's control variate) lives in ``context.state``
and so persists across rounds.

What a node is follows from the config and its partition id alone
(:mod:`sandbox.core.assignment`): its framework in a mixed federation, whether it is
malicious (:mod:`clients.attacks`), its local steps under ``[heterogeneity]``. Every
training reply reports the client's compute (steps, FedNova's normalized steps,
examples) and what it is (Keras or torch, malicious or not), so the server side and the
results need not recompute it.

A train message is handled in three steps: :func:`prepare_training` (read the message,
draw the round's batches), the trainer's ``fit``, :func:`finish_training` (reply, node
state). The vectorized backend (:mod:`clients.vectorized`) runs the same first and last
steps around one batched ``fit`` for a round's clients, so its replies and node states
are built by this code too.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import scaffold
from clients.attacks import flip_labels, malicious_reply
from clients.dp import account_round, client_mods
from clients.schedule import (
    PAD,
    batch_schedule,
    client_randomness,
    normalized_steps,
    poisson_schedule,
    round_train_config,
)
from clients.threads import framework_threads
from clients.trainer import Trainer, get_trainer
from sandbox.core import wire
from sandbox.core.assignment import client_framework, malicious_partitions
from sandbox.core.config import Config
from sandbox.core.data import ClientData
from sandbox.core.experiment import load_experiment_data
from sandbox.core.faults import InjectedFault, injected_delay, injected_failure
from sandbox.core.models import ModelSpec
from sandbox.core.privacy import SampleDPPlan, sample_dp_plan

STATE_KEY = "client-progress"
#: Flower's error code for "the ClientApp raised" (flwr.common.constant.ErrorCode).
CLIENT_APP_RAISED_EXCEPTION = 2

logger = logging.getLogger(__name__)


def make_client_app(cfg: Config) -> ClientApp:
    """Build the ``ClientApp`` for experiment ``cfg``."""
    app = ClientApp()
    private = cfg.privacy.sample.enabled

    def local(context: Context) -> tuple[int, ClientData, ModelSpec, Trainer]:
        # Everything here is cached per process (the app itself must stay picklable).
        partition_id = int(context.node_config[wire.NODE_PARTITION_ID])
        data = load_experiment_data(cfg).clients[partition_id]
        spec = wire.model_spec_for(cfg)
        framework = client_framework(cfg, partition_id)
        trainer = get_trainer(framework, spec, cfg.train, private=private,
                              mode=execution_mode(cfg, framework))
        return partition_id, data, spec, trainer

    # Client-side clipping applies to training replies only (evaluate and query messages
    # carry no model update to clip). It wraps the handler, so it clips what a malicious
    # client sends too.
    @app.train(mods=client_mods(cfg.privacy.client.mode))
    @with_client_threads(cfg)
    @failures_as_replies(cfg, "train")
    def train(msg: Message, context: Context) -> Message:
        trainer = local(context)[3]
        job = prepare_training(cfg, msg, context, trainer)
        loss = trainer.fit(job.x, job.y, job.schedule, seed=job.seed, dp=job.dp,
                           proximal_mu=job.proximal_mu, secure_rng=job.secure,
                           correction=job.correction)
        return finish_training(cfg, job, context, trainer.get_weights(), loss)

    @app.query(wire.PARTITION_QUERY_ACTION)
    def partition(msg: Message, context: Context) -> Message:
        pid = int(context.node_config[wire.NODE_PARTITION_ID])
        return Message(RecordDict({wire.METRICS: MetricRecord({wire.PARTITION_ID: pid})}),
                       reply_to=msg)

    @app.evaluate()
    @with_client_threads(cfg)
    @failures_as_replies(cfg, "evaluate")
    def evaluate(msg: Message, context: Context) -> Message:
        partition_id, data, spec, trainer = local(context)
        trainer.set_weights(wire.record_to_arrays(spec, msg.content[wire.ARRAYS]))
        loss, accuracy = trainer.evaluate(data.x_val, data.y_val)
        metrics = MetricRecord(
            {wire.EVAL_LOSS: loss, wire.EVAL_ACCURACY: accuracy,
             wire.NUM_EXAMPLES: len(data.y_val), wire.UNIT_WEIGHT: 1.0,
             wire.PARTITION_ID: partition_id}
        )
        return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)

    return app


@dataclass
class TrainingJob:
    """One client's train message, ready to train: its data, batches and settings.

    What :func:`prepare_training` draws and :func:`finish_training` needs, so that the
    ClientApp (one client at a time) and the vectorized trainer (a round's clients at
    once, :mod:`clients.vectorized`) build the same replies and node states.
    """

    msg: Message
    partition_id: int
    spec: ModelSpec
    #: the round's global weights (canonical layout)
    received: list[np.ndarray]
    x: np.ndarray
    #: training labels (flipped for a ``label_flip`` attacker)
    y: np.ndarray
    #: the reply's metrics so far (training adds loss, privacy and compute)
    metrics: MetricRecord
    #: one optimizer step per row (:mod:`clients.schedule`)
    schedule: np.ndarray
    #: framework seed (dropout masks, seeded DP noise)
    seed: int
    #: DP-SGD's plan, or ``None`` without sample-level DP
    dp: SampleDPPlan | None
    secure: bool
    #: FedProx's mu (0: none; never with DP-SGD)
    proximal_mu: float
    #: SCAFFOLD's c and c_i, and the gradient correction c - c_i (``None``: not SCAFFOLD)
    control: list[np.ndarray] | None
    own: list[np.ndarray] | None
    correction: list[np.ndarray] | None
    malicious: bool


def prepare_training(cfg: Config, msg: Message, context: Context,
                     trainer: Trainer) -> TrainingJob:
    """Read train message ``msg`` for node ``context`` and draw its round's batches.

    Loads the received weights into ``trainer`` (q-FFL's pre-training loss is taken on
    them). The batch schedule comes from :func:`clients.schedule.client_randomness`
    (seed, round, partition id): the same on every backend.
    """
    partition_id = int(context.node_config[wire.NODE_PARTITION_ID])
    data = load_experiment_data(cfg).clients[partition_id]
    spec = wire.model_spec_for(cfg)
    received = wire.record_to_arrays(spec, msg.content[wire.ARRAYS])
    trainer.set_weights(received)
    config = msg.content[wire.CONFIG]
    server_round = int(config[wire.SERVER_ROUND])
    malicious = partition_id in malicious_partitions(cfg)
    labels = data.y_train
    if malicious and cfg.attack.kind == "label_flip":
        labels = flip_labels(labels, spec.num_classes)
    metrics = MetricRecord({
        wire.NUM_EXAMPLES: len(labels), wire.UNIT_WEIGHT: 1.0,
        wire.PARTITION_ID: partition_id, wire.MALICIOUS: float(malicious),
        wire.KERAS_CLIENT: float(client_framework(cfg, partition_id) == "keras")})
    if config.get(wire.REPORT_PRE_TRAIN_LOSS, False):  # sent by q-FFL
        metrics[wire.PRE_TRAIN_LOSS] = trainer.evaluate(data.x_train, labels)[0]
    control = scaffold.server_control(msg.content, spec)
    own = None if control is None else scaffold.client_control(context, spec)
    private = cfg.privacy.sample.enabled
    # privacy.noise = "secure": DP-SGD noise and batch membership from the OS's CSPRNG
    # (see clients.schedule.SecureRandom); without sample-level DP there is neither.
    secure = private and cfg.privacy.secure_rng
    rng, framework_seed = client_randomness(cfg.seed, server_round, partition_id,
                                            secure=secure)
    n = len(labels)
    plan, mu = None, 0.0
    if private:
        plan = sample_dp_plan(cfg, n)
        schedule = (poisson_schedule(n, plan.sample_rate, plan.steps, rng) if plan.poisson
                    else batch_schedule(n, cfg.train, rng))
    else:
        schedule = batch_schedule(n, round_train_config(cfg, server_round, partition_id), rng)
        mu = float(config.get(wire.PROXIMAL_MU, 0.0))  # sent by FedProx
    return TrainingJob(
        msg=msg, partition_id=partition_id, spec=spec, received=received, x=data.x_train,
        y=labels, metrics=metrics, schedule=schedule, seed=framework_seed, dp=plan,
        secure=secure, proximal_mu=mu, control=control, own=own,
        correction=None if control is None else scaffold.correction(control, own),
        malicious=malicious)


def finish_training(cfg: Config, job: TrainingJob, context: Context,
                    weights: list[np.ndarray], train_loss: float) -> Message:
    """The reply to ``job``'s message after training ended at ``weights``; updates the
    node's state (rounds and steps trained, DP accountant, SCAFFOLD's ``c_i``)."""
    metrics = job.metrics
    metrics[wire.TRAIN_LOSS] = train_loss
    if job.dp is not None:
        metrics[wire.DP_EPSILON] = account_round(
            context, job.dp, method=cfg.privacy.accountant, delta=cfg.privacy.delta)
        metrics[wire.DP_NOISE_MULTIPLIER] = job.dp.noise_multiplier
    steps = len(job.schedule)
    _record_progress(context, steps=steps)
    metrics[wire.LOCAL_STEPS] = steps
    metrics[wire.NORMALIZED_STEPS] = normalized_steps(cfg.train, steps)
    metrics[wire.LOCAL_EXAMPLES] = int((job.schedule != PAD).sum())
    content = RecordDict({wire.METRICS: metrics})
    if job.control is not None:
        updated = scaffold.updated_control(job.control, job.own, job.received, weights,
                                           steps=metrics[wire.NORMALIZED_STEPS],
                                           lr=cfg.train.lr)
        scaffold.store_control(context, updated)
        content[wire.CONTROL_DELTA] = scaffold.control_delta(updated, job.own)
    if job.malicious:
        server_round = int(job.msg.content[wire.CONFIG][wire.SERVER_ROUND])
        weights = malicious_reply(cfg.attack, weights, job.received, seed=cfg.seed,
                                  server_round=server_round, partition_id=job.partition_id)
    content[wire.ARRAYS] = wire.to_record(weights)
    return Message(content, reply_to=job.msg)


def execution_mode(cfg: Config, framework: str) -> str:
    """How ``framework``'s training steps run (``runtime.torch_mode`` / ``keras_mode``)."""
    return cfg.runtime.torch_mode if framework == "torch" else cfg.runtime.keras_mode


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
            framework = client_framework(cfg, int(context.node_config[wire.NODE_PARTITION_ID]))
            with framework_threads(framework, cfg.runtime.threads_per_client):
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
                end = time.monotonic() + delay
                while (left := end - time.monotonic()) > 0:  # in slices: a stopped client
                    time.sleep(min(left, 0.05))              # stops within 50 ms
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
