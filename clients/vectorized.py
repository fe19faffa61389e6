"""Vectorized clients: a round's torch clients trained as one batched computation.

Every client of a round shares the architecture, so their local training is one program
over stacked parameters: ``torch.func.functional_call`` runs the model with a client's
parameters and ``torch.func.vmap`` maps that over the clients (the batching of
per-model computations of functorch, now ``torch.func``; Horace He and Richard Zou 2021).
Each client keeps what the ClientApp gives it (:func:`clients.app.prepare_training`):
its own seeded batch schedule, drawn exactly as the sequential trainer draws it, its
FedProx anchor, SCAFFOLD correction, DP-SGD plan and noise stream. Clients with fewer
examples per batch or fewer steps are masked: a padded example weighs 0 in its loss, a
step past a client's last leaves its parameters and momentum unchanged. The replies and
node states are then built by :func:`clients.app.finish_training`, as the ClientApp
builds them, so strategies, metrics and the privacy ledger see ordinary replies.

What is vectorized: torch clients with plain SGD (with or without momentum), FedProx's
proximal term (McMahan et al. 2017 FedAvg's local SGD; Li et al. 2020, "Federated
Optimization in Heterogeneous Networks", MLSys), SCAFFOLD's correction (Karimireddy et
al. 2020, ICML), sample-level DP-SGD (Abadi et al. 2016, "Deep Learning with Differential
Privacy", CCS: per-example gradients by a ``vmap`` of ``grad`` over the batch, clipped as
Opacus clips, the same seeded noise draws per client, step and parameter as
:mod:`clients.torch_dp`), attacks, client-side clipping mods and q-FFL's pre-training
loss. :func:`unsupported` names what is not (the caller runs those clients one by one).

Two implementations of the batched step: dense models (``model.arch = "mlp"``) run their
forward and backward pass written out as one ``bmm`` per layer over the clients (ghost
norms for DP-SGD's per-example clipping, as :mod:`clients.torch_dp`); models with
convolutions run ``torch.func.vmap`` of ``grad`` over ``functional_call`` (per-example
gradients by a nested ``vmap`` under DP-SGD). Both are eager (the config refuses
``runtime.torch_mode = "compile"`` with this backend).

Float tolerance: the batched kernels sum in another order than the sequential ones
(a masked mean over the padded batch instead of a mean over the real rows, batched
instead of single matrix products), so weights differ from the sequential trainer's in
the last bits of float32 per step; the runs' metrics agree with the inline backend's
within 3e-7 relative on tests/test_vectorized.py's runs (which assert 1e-5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from clients.app import finish_training, prepare_training
from clients.dp import client_mods
from clients.schedule import PAD
from clients.threads import framework_threads
from clients.torch_dp import CLIP_EPS
from clients.torch_trainer import build_module, from_torch_layout, to_torch_layout
from clients.trainer import get_trainer
from sandbox.core import wire
from sandbox.core.faults import injected_delay, injected_failure
from sandbox.core.privacy.noise import gaussian

if TYPE_CHECKING:
    from flwr.app import Context, Message

    from clients.app import TrainingJob
    from sandbox.core.config import Config, TrainConfig
    from sandbox.core.models import ModelSpec

#: the seeded DP noise stream's tag (as clients.torch_dp)
_NOISE_TAG = 0x5EED


def unsupported(cfg: Config) -> str | None:
    """Why ``cfg``'s clients cannot be trained as one batched computation, or ``None``."""
    if cfg.framework != "torch":
        return f"framework = '{cfg.framework}' (vectorized clients are torch only)"
    if cfg.train.optimizer != "sgd":
        return f"train.optimizer = '{cfg.train.optimizer}' (vectorized: 'sgd' only)"
    if cfg.model.dropout:
        return "model.dropout > 0 (dropout masks are drawn per client, one by one)"
    return None


def train_round(cfg: Config, calls: list[tuple[Message, Context]]) -> list[Message | None]:
    """Replies to a round's train messages, trained together; ``None`` for a message the
    ClientApp must handle itself (an injected fault or delay, a config :func:`unsupported`
    rejects, a client whose message cannot be read).

    Each node's ``Context.state`` is updated as the ClientApp updates it.
    """
    replies: list[Message | None] = [None] * len(calls)
    if unsupported(cfg) is not None:
        return replies
    spec = wire.model_spec_for(cfg)
    with framework_threads("torch", cfg.runtime.threads_per_client):
        trainer = get_trainer("torch", spec, cfg.train, private=cfg.privacy.sample.enabled)
        jobs: dict[int, TrainingJob] = {}
        for i, (msg, context) in enumerate(calls):
            if _needs_client_app(cfg, msg, context):
                continue
            try:
                jobs[i] = prepare_training(cfg, msg, context, _WeightsOnDemand(trainer))
            except Exception:  # noqa: BLE001 - the ClientApp replies with the failure
                continue
        if not jobs:
            return replies
        results = fit_clients(spec, cfg.train, list(jobs.values()))
        mods = client_mods(cfg.privacy.client.mode)
        for (i, job), (weights, loss) in zip(jobs.items(), results, strict=True):
            msg, context = calls[i]
            reply = finish_training(cfg, job, context, weights, loss)
            replies[i] = _through_mods(mods, msg, context, reply)
    return replies


class _WeightsOnDemand:
    """The trainer as :func:`prepare_training` sees it: weights load only when q-FFL's
    pre-training loss needs them (the batched trainer reads them from the job)."""

    def __init__(self, trainer) -> None:
        self._trainer, self._weights = trainer, None

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self._weights = weights

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        self._trainer.set_weights(self._weights)
        return self._trainer.evaluate(x, y)


def _needs_client_app(cfg: Config, msg: Message, context: Context) -> bool:
    """Injected faults and delays happen in the ClientApp (its failure replies, timeouts)."""
    pid = int(context.node_config[wire.NODE_PARTITION_ID])
    try:
        server_round = int(msg.content[wire.CONFIG][wire.SERVER_ROUND])
    except (KeyError, TypeError, ValueError):
        return True
    return bool(injected_delay(cfg, pid)) or \
        injected_failure(cfg, server_round, pid, "train") is not None


def _through_mods(mods: list, msg: Message, context: Context, reply: Message) -> Message:
    """``reply`` passed through the ClientApp's mods (client-side clipping), outermost first,
    as Flower's ClientApp applies them around its handler."""
    def handler(_msg, _context):
        return reply

    for mod in reversed(mods):
        handler = _wrapped(mod, handler)
    return handler(msg, context)


def _wrapped(mod, inner):
    def call(msg: Message, context: Context) -> Message:
        return mod(msg, context, inner)

    return call


def fit_clients(spec: ModelSpec, train: TrainConfig,
                jobs: list[TrainingJob]) -> list[tuple[list[np.ndarray], float]]:
    """Train ``jobs`` (one per client, same ``spec``) together; each client's final
    weights (canonical layout) and mean training loss, as ``TorchTrainer.fit`` returns
    them."""
    module = build_module(spec)
    names = [name for name, _ in module.named_parameters()]
    # float32 as the module's own parameters (FedAdam's server sends float64 arrays)
    params = {name: torch.from_numpy(np.stack([to_torch_layout(job.received[i])
                                               for job in jobs]).astype(np.float32))
              for i, name in enumerate(names)}
    batches = _Batches(jobs)
    private = jobs[0].dp is not None
    if spec.conv_ndim:  # torch.func: any architecture
        step = (_dp_step if private else _sgd_step)(module, jobs, batches, params)
    else:  # dense layers: the same gradients from batched matrix products
        step = _dense_step(spec, names, jobs, batches, params)
    corrections = _stacked_corrections(jobs, names)
    momentum, lr = train.momentum, train.lr
    buffers = {name: torch.zeros_like(p) for name, p in params.items()}
    losses = []
    for s in range(batches.steps):
        active = batches.active[:, s]
        everyone = bool(active.all())  # no client past its last step: no masking
        grads, loss = step(params, s)
        losses.append(loss)
        for name in names:
            g = grads[name]
            if corrections:  # SCAFFOLD: g + c - c_i (after DP's clipping and noise)
                g = g + corrections[name]
            buf = buffers[name] * momentum + g if momentum else g
            stepped = torch.add(params[name], buf, alpha=-lr)
            if everyone:
                buffers[name], params[name] = buf, stepped
                continue
            mask = active.reshape((-1,) + (1,) * (g.dim() - 1))
            buffers[name] = torch.where(mask, buf, buffers[name])
            params[name] = torch.where(mask, stepped, params[name])
    weights = [[np.array(from_torch_layout(params[name][k].numpy()), order="C", copy=True)
                for name in names] for k in range(len(jobs))]
    return list(zip(weights, batches.mean_losses(losses, private=private), strict=True))


class _Batches:
    """The clients' schedules as one padded index tensor ``(clients, steps, width)``."""

    def __init__(self, jobs: list[TrainingJob]) -> None:
        count = len(jobs)
        self.rows = torch.tensor([len(job.schedule) for job in jobs])
        self.steps = int(self.rows.max())
        width = max(job.schedule.shape[1] for job in jobs)
        examples = max(len(job.y) for job in jobs)
        index = np.zeros((count, self.steps, width), np.int64)
        real = np.zeros((count, self.steps, width), bool)
        x = np.zeros((count, examples, *jobs[0].x.shape[1:]), jobs[0].x.dtype)
        y = np.zeros((count, examples), np.int64)
        for k, job in enumerate(jobs):
            rows, cols = job.schedule.shape
            index[k, :rows, :cols] = np.where(job.schedule == PAD, 0, job.schedule)
            real[k, :rows, :cols] = job.schedule != PAD
            x[k, :len(job.y)] = job.x
            y[k, :len(job.y)] = job.y
        # rows of the clients' examples stacked as one table (index_select is the fast
        # gather on CPU)
        index += (np.arange(count) * examples)[:, None, None]
        self.index, self.real = torch.from_numpy(index), torch.from_numpy(real)
        self.x = torch.from_numpy(x.reshape(count * examples, *x.shape[2:]))
        self.y = torch.from_numpy(y.reshape(-1))
        self.weight = self.real.to(self.x.dtype)
        self.active = torch.arange(self.steps)[None, :] < self.rows[:, None]

    def at(self, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step ``s``'s inputs ``(clients, width, ...)``, labels and example weights."""
        idx = self.index[:, s]
        rows = idx.reshape(-1)
        x = self.x.index_select(0, rows).reshape(*idx.shape, *self.x.shape[1:])
        return x, self.y.index_select(0, rows).reshape(idx.shape), self.weight[:, s]

    def mean_losses(self, losses: list[torch.Tensor], *, private: bool) -> list[float]:
        """Each client's mean step loss, as the sequential trainers compute it."""
        if not private:  # a float32 running sum over the client's steps
            total = torch.zeros(len(self.rows))
            for s, loss in enumerate(losses):
                total += torch.where(self.active[:, s], loss, torch.zeros(()))
            return [float(t) / max(int(r), 1) for t, r in zip(total, self.rows, strict=True)]
        sizes = self.real.sum(2)  # DP: the mean of (summed loss / batch) over non-empty steps
        means = []
        for k, rows in enumerate(self.rows.tolist()):
            parts = [float(losses[s][k]) / int(sizes[k, s]) for s in range(rows)
                     if sizes[k, s]]
            means.append(sum(parts) / max(len(parts), 1))
        return means


def _sgd_step(module: torch.nn.Module, jobs: list[TrainingJob], batches: _Batches,
              start: dict[str, torch.Tensor]):
    """Step function: every client's mean-loss gradient (plus FedProx's mu (w - w_start))."""
    mu = torch.tensor([job.proximal_mu for job in jobs], dtype=torch.float32)
    anchors = dict(start) if bool(mu.any()) else None  # the tensors are never mutated

    def client_loss(p, x, y, weight):
        logits = functional_call(module, p, (x,))
        per_example = F.cross_entropy(logits, y, reduction="none")
        return (per_example * weight).sum() / weight.sum().clamp(min=1.0)

    batched = vmap(grad_and_value(client_loss))

    def step(params: dict, s: int):
        grads, loss = batched(params, *batches.at(s))
        if anchors is not None:  # FedProx (Li et al. 2020): d/dw (mu/2)||w - w_start||^2
            for name, g in grads.items():
                scale = mu.reshape((-1,) + (1,) * (g.dim() - 1))
                grads[name] = g + (params[name] - anchors[name]) * scale
        return grads, loss.detach()

    return step


_DERIVATIVES = {  # activation'(z) from its input z and output h
    "relu": lambda z, h: (z > 0).to(z.dtype),
    "tanh": lambda z, h: 1 - h * h,
    "sigmoid": lambda z, h: h * (1 - h),
    "elu": lambda z, h: torch.where(z > 0, torch.ones_like(z), h + 1),
}
_FUNCTIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "elu": F.elu}


def _dense_step(spec: ModelSpec, names: list[str], jobs: list[TrainingJob], batches: _Batches,
                start: dict[str, torch.Tensor]):
    """Step function of a dense model (no convolutions): forward and backward pass written
    out as batched matrix products over the clients, ``bmm`` per layer.

    Without DP each client's gradient is that of its masked mean loss (plus FedProx's
    term); with DP, per-example gradient norms are ghost norms (``||a_i||^2 ||b_i||^2`` per
    layer, as :mod:`clients.torch_dp`), clipped and summed, then noised as
    :func:`_dp_step` does. Per-call overhead is a handful of kernels per layer, not one
    autograd graph per step.
    """
    act, deriv = _FUNCTIONS[spec.activation], _DERIVATIVES[spec.activation]
    layers = [(names[2 * i], names[2 * i + 1]) for i in range(len(spec.dense_sizes()))]
    private = jobs[0].dp is not None
    mu = torch.tensor([job.proximal_mu for job in jobs], dtype=torch.float32)
    anchors = dict(start) if bool(mu.any()) else None
    if private:
        max_norm = torch.tensor([job.dp.max_grad_norm for job in jobs], dtype=torch.float32)
        expected = torch.tensor([float(job.dp.expected_batch) for job in jobs])
        noise = _noise_for(names, start, jobs, batches.steps)

    def step(params: dict, s: int):
        x, y, weight = batches.at(s)
        h = x.reshape(x.shape[0], x.shape[1], -1)
        taps = []  # (input a, pre-activation z, output h) per layer
        for i, (w_name, b_name) in enumerate(layers):
            z = torch.baddbmm(params[b_name].unsqueeze(1), h, params[w_name].transpose(1, 2))
            out = act(z) if i < len(layers) - 1 else z
            taps.append((h, z, out))
            h = out
        count, width, classes = h.shape
        per_example = F.cross_entropy(h.reshape(-1, classes), y.reshape(-1),
                                      reduction="none").reshape(count, width)
        b = torch.softmax(h, dim=2) - F.one_hot(y, classes).to(h.dtype)  # d ce_i / d z
        if private:
            loss = (per_example * weight).sum(1)
        else:
            denominator = weight.sum(1).clamp(min=1.0)
            loss = (per_example * weight).sum(1) / denominator
            b = b * (weight / denominator[:, None]).unsqueeze(2)
        pairs = []  # (a, b) per layer, last first
        for i in range(len(layers) - 1, -1, -1):
            a, z, out = taps[i]
            if i < len(layers) - 1:
                b = b * deriv(z, out)
            pairs.append((a, b))
            if i:
                b = torch.bmm(b, params[layers[i][0]])
        pairs.reverse()
        if private:
            squared = sum((a.square().sum(2) + 1) * b.square().sum(2) for a, b in pairs)
            factor = (max_norm[:, None] / (squared.sqrt() + CLIP_EPS)).clamp(max=1.0) * weight
            pairs = [(a, b * factor.unsqueeze(2)) for a, b in pairs]
        grads = {}
        for (w_name, b_name), (a, b) in zip(layers, pairs, strict=True):
            grads[w_name] = torch.bmm(b.transpose(1, 2), a)
            grads[b_name] = b.sum(1)
        for name, g in grads.items():
            scale = (-1,) + (1,) * (g.dim() - 1)
            if private:
                grads[name] = (g + noise[name][:, s]) / expected.reshape(scale)
            elif anchors is not None:  # FedProx: mu (w - w_start)
                grads[name] = g + (params[name] - anchors[name]) * mu.reshape(scale)
        return grads, loss

    return step


def _dp_step(module: torch.nn.Module, jobs: list[TrainingJob], batches: _Batches,
             start: dict[str, torch.Tensor]):
    """Step function: every client's clipped per-example gradient sum plus its noise, over
    its expected batch size (DP-SGD as :func:`clients.torch_dp.fit_private`)."""
    max_norm = torch.tensor([job.dp.max_grad_norm for job in jobs], dtype=torch.float32)
    expected = torch.tensor([float(job.dp.expected_batch) for job in jobs])

    def example_loss(p, x, y):
        logits = functional_call(module, p, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0), reduction="sum")

    per_example = vmap(grad_and_value(example_loss), in_dims=(None, 0, 0))

    def clipped_sum(p, x, y, weight, norm):
        g, losses = per_example(p, x, y)
        squared = sum(t.flatten(1).square().sum(1) for t in g.values())
        factor = (norm / (squared.sqrt() + CLIP_EPS)).clamp(max=1.0) * weight
        return {name: torch.tensordot(factor, t, 1) for name, t in g.items()}, \
            (losses * weight).sum()

    batched = vmap(clipped_sum)
    noise = _noise_for([n for n, _ in module.named_parameters()], start, jobs, batches.steps)

    def step(params: dict, s: int):
        x, y, weight = batches.at(s)
        sums, loss = batched(params, x, y, weight, max_norm)
        grads = {}
        for name, summed in sums.items():
            scale = expected.reshape((-1,) + (1,) * (summed.dim() - 1))
            grads[name] = (summed + noise[name][:, s]) / scale
        return grads, loss.detach()

    return step


def _noise_for(names: list[str], stacked: dict[str, torch.Tensor], jobs: list[TrainingJob],
               steps: int) -> dict[str, torch.Tensor]:
    """Each client's DP noise ``(clients, steps, *shape)`` per parameter, drawn in the
    sequential trainer's order (step by step, parameters in module order)."""
    shapes = {name: tuple(stacked[name].shape[1:]) for name in names}
    noise = {name: torch.zeros((len(jobs), steps, *shape)) for name, shape in shapes.items()}
    for k, job in enumerate(jobs):
        std = job.dp.noise_multiplier * job.dp.max_grad_norm
        generator = None if job.secure else torch.Generator().manual_seed(job.seed ^ _NOISE_TAG)
        for s in range(len(job.schedule)):
            for name, shape in shapes.items():
                noise[name][k, s] = (torch.from_numpy(gaussian(shape, std, None))
                                     if job.secure else
                                     torch.normal(0.0, std, shape, generator=generator))
    return noise


def _stacked_corrections(jobs: list[TrainingJob], names: list[str]) -> dict[str, torch.Tensor]:
    """SCAFFOLD's ``c - c_i`` per parameter, stacked over clients (empty: no SCAFFOLD)."""
    if all(job.correction is None for job in jobs):
        return {}
    stacked = {}
    for i, name in enumerate(names):
        rows = []
        for job in jobs:
            if job.correction is None:  # a client without SCAFFOLD in a SCAFFOLD round
                rows.append(np.zeros_like(to_torch_layout(job.received[i])))
            else:
                rows.append(np.ascontiguousarray(to_torch_layout(job.correction[i])))
        stacked[name] = torch.from_numpy(np.stack(rows))
    return stacked
