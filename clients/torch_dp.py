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
                         max_norm: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Summed loss of the batch and ``Σ_i clip(g_i)`` per parameter (module order)."""
    logits, taps = _forward(module, x)
    loss = F.cross_entropy(logits, y, reduction="sum")
    outputs = torch.autograd.grad(loss, [out for _, _, out in taps])
    batch = x.shape[0]
    squared = torch.zeros(batch)
    per_layer = []
    for (layer, a, _), b in zip(taps, outputs, strict=True):
        a, b = a.detach(), b.detach()
        if isinstance(layer, nn.Linear):
            b_sq = b.square().sum(1)
            squared += a.square().sum(1) * b_sq + b_sq
            per_layer.append((layer, a, b, None))
        else:
            weight = _conv_per_example(layer, a, b)
            bias = b.flatten(2).sum(2)
            squared += weight.flatten(1).square().sum(1) + bias.square().sum(1)
            per_layer.append((layer, a, bias, weight))
    factor = (max_norm / (squared.sqrt() + CLIP_EPS)).clamp(max=1.0)
    sums: dict[nn.Parameter, torch.Tensor] = {}
    for layer, a, b, weight in per_layer:
        scaled = b * factor[:, None]
        if weight is None:
            sums[layer.weight] = scaled.T @ a
        else:
            sums[layer.weight] = torch.tensordot(factor, weight, 1)
        sums[layer.bias] = scaled.sum(0)
    return loss.detach(), [sums[p] for p in module.parameters()]


def fit_private(module: nn.Module, optimizer: torch.optim.Optimizer, x: np.ndarray,
                y: np.ndarray, schedule: np.ndarray, *, dp: SampleDPPlan, seed: int,
                secure_rng: bool, offsets: list[torch.Tensor]) -> float:
    """One round of DP-SGD (one step per schedule row); the mean loss of non-empty steps.

    ``offsets`` (SCAFFOLD's ``c - c_i``) are added to the privatized gradient
    (post-processing), before the optimizer step.
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
            loss, sums = clipped_gradient_sum(module, xt[idx], yt[idx], dp.max_grad_norm)
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
