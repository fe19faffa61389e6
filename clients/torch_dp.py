"""DP-SGD for :class:`~clients.torch_trainer.SpecModule`: one backward pass, exact clipping.

Each step computes every example's gradient norm and the clipped gradient sum from one
batched forward and backward pass (Goodfellow 2015, "Efficient per-example gradient
computations"; Li et al. 2022, "Large language models can be strong differentially
private learners", ghost clipping): the forward pass keeps each parametrized layer's
input ``a`` and output ``z``, and one ``autograd.grad`` of the summed loss gives every
example's output gradient ``b = dL/dz`` (the loss is a sum, so row ``i`` of ``b``
depends on example ``i`` only). Then, per layer,

- dense: example ``i``'s weight gradient is ``b_i a_iᵀ``, whose squared norm is
  ``‖a_i‖²‖b_i‖²`` (never materialized); the clipped sum is ``(c ⊙ b)ᵀ a``;
- convolution: the per-example weight gradients come from the unfolded (padded) input,
  ``b_i · unfold(a_i)ᵀ``, small for the models here; the clipped sum weights them by ``c``;
- bias: ``b_i`` summed over positions.

``c_i = min(1, C / (‖g_i‖ + 1e-6))`` as Opacus' ``DPOptimizer`` computes it. Noise and
scaling follow Opacus too (Abadi et al. 2016): ``N(0, (σC)²)`` per coordinate added to
the clipped sum, then divided by the expected batch size, and the plain torch optimizer
steps. ``privacy.noise = "seeded"`` draws the noise with ``torch.normal`` from a
generator seeded per client and round, parameter by parameter in module order: the same
draws as Opacus' ``DPOptimizer(generator=...)``, so both give the same weights to float
tolerance; ``"secure"`` draws it from :func:`os.urandom`
(:func:`sandbox.core.privacy.noise.gaussian`). An empty Poisson batch is a noise-only step.

Compared with Opacus' ``GradSampleModule`` (module hooks, per-parameter Python work)
this is the same arithmetic with less per-step overhead (``benchmarks/bench_dp.py``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from clients.schedule import PAD
from sandbox.core.privacy import SampleDPPlan
from sandbox.core.privacy.noise import gaussian

_CONVS = (nn.Conv1d, nn.Conv2d)
#: Opacus' stabilizer in the clip factor C / (norm + eps)
CLIP_EPS = 1e-6


def _forward(module: nn.Module, x: torch.Tensor):
    """``module(x)`` (a ``SpecModule``) and its parametrized layers' (layer, input, output)."""
    taps = []
    h = x
    if module.spec.conv_ndim:
        h = torch.movedim(x, -1, 1).clone(memory_format=torch.contiguous_format)
        for layer in module.features:
            out = layer(h)
            if isinstance(layer, _CONVS):
                taps.append((layer, h, out))
            h = out
        h = torch.movedim(h, 1, -1)
    h = torch.flatten(h, 1)
    for layer in module.classifier:
        out = layer(h)
        if isinstance(layer, nn.Linear):
            taps.append((layer, h, out))
        h = out
    return h, taps


def _conv_per_example(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example weight gradients ``(B, out, in, *k)`` of a stride-1 'same' convolution."""
    kernel = layer.kernel_size
    pads: list[int] = []
    for k in reversed(kernel):  # F.pad takes the last dimension first
        total = k - 1  # 'same' with stride 1, dilation 1: torch pads total // 2 on the left
        pads += [total // 2, total - total // 2]
    a = F.pad(a, pads)
    batch = a.shape[0]
    if len(kernel) == 1:
        patches = a.unfold(2, kernel[0], 1)  # (B, in, L, k)
        return torch.einsum("bol,bilk->boik", b, patches)
    patches = F.unfold(a, kernel)  # (B, in*kh*kw, L)
    grads = torch.bmm(b.reshape(batch, b.shape[1], -1), patches.transpose(1, 2))
    return grads.reshape(batch, *layer.weight.shape)


def clipped_gradient_sum(module: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         max_norm: float, *, clip_sum=None
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Summed loss of the batch and ``Σ_i clip(g_i)`` per parameter (module order).

    ``clip_sum`` is :func:`clip_and_sum` (the default) or a compiled version of it: the
    forward and backward pass stay eager, because the gradients with respect to the
    layers' outputs cannot be taken across a compiled graph.
    """
    logits, taps = _forward(module, x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    outputs = torch.autograd.grad(loss, [out for _, _, out in taps])
    layers = [layer for layer, _, _ in taps]
    sums = (clip_sum or clip_and_sum)(layers, [a.detach() for _, a, _ in taps],
                                      [b.detach() for b in outputs], max_norm)
    by_param: dict[nn.Parameter, torch.Tensor] = {}
    for layer, (weight, bias) in zip(layers, sums, strict=True):
        by_param[layer.weight], by_param[layer.bias] = weight, bias
    return loss.detach(), [by_param[p] for p in module.parameters()]


def clip_and_sum(layers: list[nn.Module], inputs: list[torch.Tensor],
                 output_grads: list[torch.Tensor], max_norm: float
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the clipped sums of the weight and bias gradients over the batch.

    ``inputs`` are the layers' inputs ``a``, ``output_grads`` the gradients ``b`` of the
    summed loss with respect to their outputs.
    """
    batch = inputs[0].shape[0]
    squared = torch.zeros(batch, dtype=inputs[0].dtype)
    per_layer = []
    for layer, a, b in zip(layers, inputs, output_grads, strict=True):
        if isinstance(layer, nn.Linear):
            b_sq = b.square().sum(1)
            squared = squared + a.square().sum(1) * b_sq + b_sq
            per_layer.append((a, b, None))
        else:
            weight = _conv_per_example(layer, a, b)
            bias = b.flatten(2).sum(2)
            squared = squared + weight.flatten(1).square().sum(1) + bias.square().sum(1)
            per_layer.append((a, bias, weight))
    factor = (max_norm / (squared.sqrt() + CLIP_EPS)).clamp(max=1.0)
    sums = []
    for a, b, weight in per_layer:
        scaled = b * factor[:, None]
        summed = scaled.T @ a if weight is None else torch.tensordot(factor, weight, 1)
        sums.append((summed, scaled.sum(0)))
    return sums


def fit_private(module: nn.Module, optimizer: torch.optim.Optimizer, x: np.ndarray,
                y: np.ndarray, schedule: np.ndarray, *, dp: SampleDPPlan, seed: int,
                secure_rng: bool, offsets: list[torch.Tensor],
                clipped_sum=clipped_gradient_sum) -> float:
    """One round of DP-SGD (one step per schedule row); the mean loss of non-empty steps.

    ``offsets`` (SCAFFOLD's ``c - c_i``) are added to the privatized gradient
    (post-processing), before the optimizer step. ``clipped_sum`` is
    :func:`clipped_gradient_sum` or a compiled version of it (``runtime.torch_mode``).
    """
    params = list(module.parameters())
    std = dp.noise_multiplier * dp.max_grad_norm
    generator = None if secure_rng else torch.Generator().manual_seed(seed ^ 0x5EED)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    module.train()
    total, nonempty = 0.0, 0
    for row in torch.from_numpy(schedule):
        idx = row[row != PAD]
        if len(idx):
            loss, sums = clipped_sum(module, xt[idx], yt[idx], dp.max_grad_norm)
            total += float(loss) / len(idx)
            nonempty += 1
        else:  # an empty Poisson batch: noise only
            sums = [torch.zeros_like(p) for p in params]
        for param, summed, offset in zip(params, sums, offsets or [None] * len(params),
                                         strict=True):
            noise = (torch.from_numpy(gaussian(tuple(summed.shape), std, None))
                     .to(summed) if secure_rng else
                     torch.normal(0.0, std, summed.shape, generator=generator))
            param.grad = (summed + noise) / dp.expected_batch
            if offset is not None:
                param.grad.add_(offset)
        optimizer.step()
    return total / max(nonempty, 1)
