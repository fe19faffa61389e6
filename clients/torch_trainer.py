"""PyTorch bridge: build a :class:`~sandbox.core.models.ModelSpec` as an ``nn.Module`` and train it.

DP-SGD is :mod:`clients.torch_dp` (per-example clipping from one backward pass, Opacus'
clipping, noise and scaling arithmetic, a fresh plain optimizer each round). Batches come
from the framework-neutral Poisson schedule (:func:`clients.schedule.poisson_schedule`)
instead of Opacus' ``DPDataLoader``, so torch and Keras clients draw identical batches; the
accountant lives with the client's node state (``clients.dp``), not in a
``PrivacyEngine`` that would be rebuilt every round. The noise comes from
:func:`os.urandom` (``privacy.noise = "secure"``, the default), or from a torch generator
seeded per client and round (``"seeded"``).

``mode = "compile"`` (``runtime.torch_mode``) runs each training step's forward and
backward pass through ``torch.compile`` (TorchInductor, dynamic batch shapes); under
DP-SGD only the per-example clipping arithmetic is compiled (the forward and backward pass
stay eager: :func:`clients.torch_dp.clipped_gradient_sum`). The optimizer step and
evaluation stay eager. Compiled kernels fuse
and reorder float operations, so losses differ from eager mode in the last bits.

Inputs arrive channels-last (the canonical data layout); the module moves channels first
for its convolutions and back to channels-last before flattening, so the flattened
features, and hence the dense weights, line up with the Keras model.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from clients.schedule import PAD
from sandbox.core.config import TrainConfig
from sandbox.core.models import ModelSpec
from sandbox.core.privacy import SampleDPPlan

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU}


class SpecModule(nn.Module):
    """``ModelSpec`` as a torch module; parameters ordered as the canonical layout."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d}.get(spec.conv_ndim)
        pool_cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d}.get(spec.conv_ndim)
        convs: list[nn.Module] = []
        for layer in spec.conv_layers():
            convs.append(conv_cls(layer.in_channels, layer.out_channels, layer.kernel_size,
                                  padding="same"))
            convs.append(_ACTIVATIONS[spec.activation]())
            if layer.pool:
                convs.append(pool_cls(2))
        self.features = nn.Sequential(*convs)
        dense: list[nn.Module] = []
        sizes = spec.dense_sizes()
        for i, (fan_in, fan_out) in enumerate(sizes):
            dense.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 1:
                dense.append(_ACTIVATIONS[spec.activation]())
                if spec.dropout:
                    dense.append(nn.Dropout(spec.dropout))
        self.classifier = nn.Sequential(*dense)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.conv_ndim:
            # channels-last -> channels-first, copied to standard strides: a strided view
            # propagates a channels-last memory format through the convolutions, and
            # Opacus' conv grad sampler (unfold2d via as_strided) assumes standard
            # strides, so it computed wrong per-example gradients for 2-D inputs.
            x = torch.movedim(x, -1, 1).clone(memory_format=torch.contiguous_format)
            x = torch.movedim(self.features(x), 1, -1)  # and back before flattening
        return self.classifier(torch.flatten(x, 1))


def to_torch_layout(array: np.ndarray) -> np.ndarray:
    """Canonical (Keras) layout -> torch parameter layout."""
    if array.ndim == 2:  # dense (in, out) -> (out, in)
        return array.T
    if array.ndim >= 3:  # conv (*k, in, out) -> (out, in, *k)
        return np.moveaxis(array, (-1, -2), (0, 1))
    return array


def from_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array.T
    if array.ndim >= 3:
        return np.moveaxis(array, (0, 1), (-1, -2))
    return array


def build_module(spec: ModelSpec, weights: list[np.ndarray] | None = None) -> SpecModule:
    module = SpecModule(spec)
    if weights is not None:
        load_weights(module, weights)
    return module


def load_weights(module: nn.Module, weights: list[np.ndarray]) -> None:
    params = list(module.parameters())
    if len(params) != len(weights):
        raise ValueError(f"expected {len(params)} weight arrays, got {len(weights)}")
    with torch.no_grad():
        for param, array in zip(params, weights, strict=True):
            # copy_ reads the transposed view directly (no contiguous copy in numpy first)
            param.copy_(torch.from_numpy(to_torch_layout(np.asarray(array, np.float32))))


@torch.no_grad()
def sgd_update(params: list[torch.Tensor], grads: tuple[torch.Tensor, ...],
               buffers: list[torch.Tensor | None], *, lr: float, momentum: float) -> None:
    """One step of SGD with (heavy-ball) momentum, in place: ``torch.optim.SGD``'s update.

    The same tensor operations in the same order as ``torch.optim.SGD`` (dampening 0, no
    weight decay, not Nesterov) on CPU, so the weights are bit-identical
    (``tests/test_trainers.py``); it skips the optimizer's per-step Python machinery
    (``.grad`` accumulation, hooks, profiler records), which cost as much as the step's
    arithmetic on small models (``benchmarks/bench_step_gap.py``). ``buffers`` holds the
    momentum buffers (``None`` before the first step). Momentum: Polyak, "Some methods of
    speeding up the convergence of iteration methods" (1964); in this form, Sutskever et
    al., "On the importance of initialization and momentum in deep learning" (ICML 2013).
    """
    for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
        if momentum:
            if buffers[i] is None:
                buffers[i] = torch.clone(grad).detach()
            else:
                buffers[i].mul_(momentum).add_(grad)
            grad = buffers[i]
        param.add_(grad, alpha=-lr)


class TorchTrainer:
    """Local SGD/Adam training of a ``SpecModule`` (see :class:`clients.trainer.Trainer`)."""

    def __init__(self, spec: ModelSpec, cfg: TrainConfig, *, private: bool = False,
                 mode: str = "eager") -> None:
        from clients.torch_dp import clip_and_sum, clipped_gradient_sum

        if mode not in ("eager", "compile"):
            raise ValueError(f"unknown torch mode '{mode}'; allowed: eager, compile")
        self.spec = spec
        self.cfg = cfg
        self.module = build_module(spec)
        self.loss_fn = nn.CrossEntropyLoss()
        self.private = private
        self.mode = mode
        self._batch_loss = self._eager_batch_loss
        self._clipped_sum = clipped_gradient_sum
        if mode == "compile":
            self._batch_loss = torch.compile(self._eager_batch_loss, dynamic=True)
            self._clipped_sum = functools.partial(
                clipped_gradient_sum, clip_sum=torch.compile(clip_and_sum, dynamic=True))

    def _eager_batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.module(x), y)

    def get_weights(self) -> list[np.ndarray]:
        """Copies in the canonical layout (never views of the live parameters)."""
        return [
            np.array(from_torch_layout(p.detach().numpy()), order="C", copy=True)
            for p in self.module.parameters()
        ]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        load_weights(self.module, weights)

    def _optimizer(self) -> torch.optim.Optimizer:
        params = self.module.parameters()
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.cfg.lr)
        return torch.optim.SGD(params, lr=self.cfg.lr, momentum=self.cfg.momentum)

    def _correction(self, correction: list[np.ndarray] | None) -> list[torch.Tensor]:
        """SCAFFOLD's ``c - c_i`` in the parameters' layout (empty: no correction)."""
        if correction is None:
            return []
        return [torch.from_numpy(np.ascontiguousarray(to_torch_layout(c)))
                for c in correction]

    def fit(self, x: np.ndarray, y: np.ndarray, schedule: np.ndarray, *, seed: int,
            dp: SampleDPPlan | None = None, proximal_mu: float = 0.0,
            secure_rng: bool = False, correction: list[np.ndarray] | None = None) -> float:
        # Dropout masks. (torch.manual_seed also seeds CUDA/XPU/MTIA stubs: ~1 ms per call.)
        torch.random.default_generator.manual_seed(seed)
        if (dp is not None) != self.private:
            raise ValueError("a private trainer needs a DP plan, a plain one must not get one")
        offsets = self._correction(correction)
        if dp is not None:
            return self._fit_private(x, y, schedule, seed=seed, dp=dp, secure_rng=secure_rng,
                                     offsets=offsets)
        # Fresh optimizer state each round, as in FedAvg. SGD is applied by sgd_update
        # (torch.optim.SGD's arithmetic without its per-step Python machinery).
        optimizer = None if self.cfg.optimizer == "sgd" else self._optimizer()
        params = list(self.module.parameters())
        momentum_buffers: list[torch.Tensor | None] = [None] * len(params)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        self.module.train()
        total = torch.zeros(())
        anchor = [p.detach().clone() for p in params] if proximal_mu else []
        for row in torch.from_numpy(schedule):
            idx = row[row != PAD]  # the last batch of an epoch may be partial
            loss = self._batch_loss(xt[idx], yt[idx])
            objective = loss
            if proximal_mu:  # FedProx (Li et al. 2020): (mu/2) ||w - w_global||^2
                objective = loss + proximal_mu / 2 * sum(
                    (p - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))
            if optimizer is None:
                grads = torch.autograd.grad(objective, params)
                if offsets:  # SCAFFOLD: g + c - c_i
                    for grad, offset in zip(grads, offsets, strict=True):
                        grad.add_(offset)
                sgd_update(params, grads, momentum_buffers, lr=self.cfg.lr,
                           momentum=self.cfg.momentum)
            else:
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                if offsets:
                    for param, offset in zip(params, offsets, strict=True):
                        param.grad.add_(offset)
                optimizer.step()
            total += loss.detach()  # the data loss, without the proximal term (as Keras)
        return float(total) / max(len(schedule), 1)

    def _fit_private(self, x: np.ndarray, y: np.ndarray, schedule: np.ndarray, *, seed: int,
                     dp: SampleDPPlan, secure_rng: bool,
                     offsets: list[torch.Tensor]) -> float:
        from clients.torch_dp import fit_private

        return fit_private(self.module, self._optimizer(), x, y, schedule, dp=dp, seed=seed,
                           secure_rng=secure_rng, offsets=offsets,
                           clipped_sum=self._clipped_sum)

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        self.module.eval()
        parts = [self.module(torch.from_numpy(x[s : s + 4096])).numpy()
                 for s in range(0, len(x), 4096)]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.num_classes))

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        self.module.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), 4096):
            xb = torch.from_numpy(x[start : start + 4096])
            yb = torch.from_numpy(y[start : start + 4096])
            logits = self.module(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        n = max(len(y), 1)
        return loss_sum / n, correct / n
