"""Framework-neutral model description and its canonical weight layout.

A :class:`ModelSpec` is described once and built as a torch ``nn.Module``
(``clients.torch_trainer``) or a ``keras.Model`` (``clients.keras_trainer``). Both expose
the same ordered list of numpy arrays, in Keras' channels-last layout:

* dense kernel ``(in, out)``, bias ``(out,)``
* conv kernel ``(k, in, out)`` (1-D) or ``(k, k, in, out)`` (2-D), bias ``(out,)``

Layers: ``[conv -> act -> maxpool(2)] * len(channels)`` (CNN only), flatten,
``[dense -> act -> dropout] * len(hidden)``, dense logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sandbox.core.errors import ConfigError

if TYPE_CHECKING:
    from sandbox.core.config import ModelConfig


@dataclass(frozen=True)
class ConvLayer:
    in_channels: int
    out_channels: int
    kernel_size: int
    ndim: int
    pool: bool


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...]
    channels: tuple[int, ...]
    kernel_size: int
    activation: str
    dropout: float

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int
    ) -> ModelSpec:
        spec = cls(
            arch=cfg.arch,
            input_shape=tuple(int(d) for d in input_shape),
            num_classes=int(num_classes),
            hidden=tuple(cfg.hidden),
            channels=tuple(cfg.channels) if cfg.arch == "cnn" else (),
            kernel_size=cfg.kernel_size,
            activation=cfg.activation,
            dropout=cfg.dropout,
        )
        if spec.arch == "cnn" and len(spec.input_shape) not in (2, 3):
            raise ConfigError(
                f"model.arch='cnn' needs sequence (length, channels) or image "
                f"(height, width, channels) inputs; this dataset gives shape {spec.input_shape}. "
                "Use model.arch='mlp'."
            )
        return spec

    @property
    def conv_ndim(self) -> int:
        return len(self.input_shape) - 1 if self.arch == "cnn" else 0

    def conv_layers(self) -> list[ConvLayer]:
        layers, in_ch = [], self.input_shape[-1] if self.conv_ndim else 0
        spatial = list(self.input_shape[:-1])
        for out_ch in self.channels:
            pool = min(spatial) >= 2
            layers.append(ConvLayer(in_ch, out_ch, self.kernel_size, self.conv_ndim, pool))
            spatial = [s // 2 for s in spatial] if pool else spatial
            in_ch = out_ch
        return layers

    def flat_features(self) -> int:
        if not self.conv_ndim:
            return math.prod(self.input_shape)
        spatial = list(self.input_shape[:-1])
        for layer in self.conv_layers():
            spatial = [s // 2 for s in spatial] if layer.pool else spatial
        return math.prod(spatial) * self.channels[-1]

    def dense_sizes(self) -> list[tuple[int, int]]:
        sizes = [self.flat_features(), *self.hidden, self.num_classes]
        return list(zip(sizes[:-1], sizes[1:], strict=True))

    def weight_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Canonical ordered (name, shape) list shared by both frameworks."""
        shapes = []
        for i, conv in enumerate(self.conv_layers()):
            kernel = (conv.kernel_size,) * conv.ndim + (conv.in_channels, conv.out_channels)
            shapes += [(f"conv{i}.kernel", kernel), (f"conv{i}.bias", (conv.out_channels,))]
        for i, (fan_in, fan_out) in enumerate(self.dense_sizes()):
            shapes += [(f"dense{i}.kernel", (fan_in, fan_out)), (f"dense{i}.bias", (fan_out,))]
        return shapes

    def weight_names(self) -> list[str]:
        return [name for name, _ in self.weight_shapes()]

    def init_weights(self, seed: int) -> list[np.ndarray]:
        """Glorot-uniform kernels and zero biases from ``seed`` (identical in both frameworks)."""
        rng = np.random.default_rng(seed)
        weights = []
        for _, shape in self.weight_shapes():
            if len(shape) == 1:
                weights.append(np.zeros(shape, dtype=np.float32))
                continue
            receptive = math.prod(shape[:-2])
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weights.append(rng.uniform(-limit, limit, shape).astype(np.float32))
        return weights

    def num_parameters(self) -> int:
        return sum(math.prod(shape) for _, shape in self.weight_shapes())

    def activations_per_example(self) -> int:
        """Values one example's forward pass produces (conv maps before and after pooling,
        dense outputs): what training keeps per example for the backward pass."""
        total, spatial = 0, list(self.input_shape[:-1])
        for layer in self.conv_layers():
            total += math.prod(spatial) * layer.out_channels
            if layer.pool:
                spatial = [s // 2 for s in spatial]
                total += math.prod(spatial) * layer.out_channels
        return total + sum(fan_out for _, fan_out in self.dense_sizes())

    def training_bytes(self, *, batch_size: int, per_example_grads: bool) -> int:
        """Estimated float32 memory of one client's training step.

        Weights, gradients and up to two optimizer slots (4 copies of the parameters),
        activations for forward and backward (2 per value per example), and with DP-SGD
        one gradient per example (Opacus' grad samples; our Keras DP step).
        """
        params = self.num_parameters()
        values = 4 * params + 2 * self.activations_per_example() * batch_size
        if per_example_grads:
            values += params * batch_size
        return 4 * values
