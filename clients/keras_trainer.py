"""Keras 3 (TensorFlow backend) bridge: build a :class:`~sandbox.models.ModelSpec` and train it.

Local training runs as one compiled ``tf.function`` per call: the loop over the batch
schedule is a graph ``while`` loop, so a round of local steps costs one Python call.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sandbox.config import TrainConfig  # noqa: E402
from sandbox.models import ModelSpec  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise RuntimeError(
        f"the Keras trainer needs KERAS_BACKEND=tensorflow, found '{keras.backend.backend()}'"
    )


def build_model(spec: ModelSpec, weights: list[np.ndarray] | None = None) -> keras.Model:
    conv = {1: keras.layers.Conv1D, 2: keras.layers.Conv2D}.get(spec.conv_ndim)
    pool = {1: keras.layers.MaxPooling1D, 2: keras.layers.MaxPooling2D}.get(spec.conv_ndim)
    layers: list[keras.layers.Layer] = [keras.Input(shape=spec.input_shape)]
    for layer in spec.conv_layers():
        layers.append(conv(layer.out_channels, layer.kernel_size, padding="same",
                           activation=spec.activation))
        if layer.pool:
            layers.append(pool(2))
    layers.append(keras.layers.Flatten())
    for width in spec.hidden:
        layers.append(keras.layers.Dense(width, activation=spec.activation))
        if spec.dropout:
            layers.append(keras.layers.Dropout(spec.dropout))
    layers.append(keras.layers.Dense(spec.num_classes))
    model = keras.Sequential(layers)
    model.set_weights(weights if weights is not None else spec.init_weights(0))
    return model


def _optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=cfg.lr)
    return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)


class KerasTrainer:
    """Local training of a Keras model (see :class:`clients.trainer.Trainer`)."""

    def __init__(self, spec: ModelSpec, cfg: TrainConfig) -> None:
        self.spec = spec
        self.model = build_model(spec)
        self.optimizer = _optimizer(cfg)
        self.optimizer.build(self.model.trainable_variables)
        self._optimizer_start = [v.numpy() for v in self.optimizer.variables]
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._seed_generators = [
            layer.seed_generator for layer in self.model.layers
            if isinstance(layer, keras.layers.Dropout)
        ]
        x_spec = tf.TensorSpec((None, *spec.input_shape), tf.float32)
        y_spec = tf.TensorSpec((None,), tf.int64)
        self._train = tf.function(
            self._train_steps,
            input_signature=[x_spec, y_spec, tf.TensorSpec((None, None), tf.int64)],
        )
        self._logits = tf.function(
            lambda x: self.model(x, training=False), input_signature=[x_spec]
        )

    def get_weights(self) -> list[np.ndarray]:
        return self.model.get_weights()

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.model.set_weights(weights)

    def _train_steps(self, x: tf.Tensor, y: tf.Tensor, schedule: tf.Tensor) -> tf.Tensor:
        variables = self.model.trainable_variables
        total = tf.constant(0.0)
        for row in tf.range(tf.shape(schedule)[0]):
            idx = schedule[row]
            xb, yb = tf.gather(x, idx), tf.gather(y, idx)
            with tf.GradientTape() as tape:
                loss = self.loss_fn(yb, self.model(xb, training=True))
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            total += loss
        return total / tf.cast(tf.shape(schedule)[0], tf.float32)

    def _reset_state(self, seed: int) -> None:
        # A fresh optimizer each round (as FedAvg clients do) without retracing the step.
        for variable, start in zip(self.optimizer.variables, self._optimizer_start, strict=True):
            variable.assign(start)
        for generator in self._seed_generators:
            generator.state.assign(np.array([seed, 0], dtype=generator.state.dtype))

    def fit(self, x: np.ndarray, y: np.ndarray, schedule: np.ndarray, *, seed: int) -> float:
        self._reset_state(seed)
        return float(self._train(x, y, schedule))

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        logits = self.logits(x)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = max(len(y), 1)
        loss = float(-log_probs[np.arange(len(y)), y].sum()) / n
        return loss, float((logits.argmax(1) == y).sum()) / n

    def logits(self, x: np.ndarray) -> np.ndarray:
        parts = [self._logits(x[s : s + 4096]).numpy() for s in range(0, len(x), 4096)]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.num_classes))
