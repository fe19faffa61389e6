"""Keras 3 (TensorFlow backend) bridge: build a :class:`~sandbox.core.models.ModelSpec`, train it.

Local training runs as one compiled ``tf.function`` per call: the loop over the batch
schedule is a graph ``while`` loop, so a round of local steps costs one Python call.
``runtime.keras_mode`` changes how the training steps execute: ``"graph"`` (that
``tf.function``, the default), ``"eager"`` (the same Python code op by op, as Keras'
``run_eagerly=True``) or ``"xla"`` (``tf.function(jit_compile=True)``: XLA compiles the
whole loop, once per distinct input shape, i.e. per client data size and schedule shape).
Evaluation (``logits``) is a ``tf.function`` in every mode.

DP-SGD (Abadi et al. 2016) runs in the same kind of loop: per-example gradients come
from one batched backward pass (``clients.keras_dp``, the layer-wise trick Opacus uses),
each example's gradient is clipped to global L2 norm
``max_grad_norm``, the clipped gradients are summed, Gaussian noise of std
``noise_multiplier * max_grad_norm`` is added and the sum is divided by the expected batch
size. With ``privacy.noise = "secure"`` (the default) the noise is drawn beforehand from
:func:`os.urandom` (:func:`sandbox.core.privacy.noise.gaussian`) and fed to the loop one row
per step; with ``"seeded"`` it is drawn inside the loop (``tf.random.stateless_normal``,
seeded per step). Accounting uses the same Opacus accountant as torch clients
(``clients.dp``).

Schedule rows may be padded with :data:`clients.schedule.PAD` (the partial last batch of
an epoch, Poisson batches): padded entries are gathered at a safe index and weighted 0,
so every step keeps one compiled shape and averages over the real examples only.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from clients.keras_dp import clipped_gradient_sum  # noqa: E402
from clients.schedule import PAD  # noqa: E402
from clients.threads import default_tensorflow_threads  # noqa: E402
from sandbox.core.config import TrainConfig  # noqa: E402
from sandbox.core.models import ModelSpec  # noqa: E402
from sandbox.core.privacy import SampleDPPlan  # noqa: E402
from sandbox.core.privacy.noise import gaussian  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise RuntimeError(
        f"the Keras trainer needs KERAS_BACKEND=tensorflow, found '{keras.backend.backend()}'"
    )

# TensorFlow fixes its thread pools at its first op: models built outside a run (tests,
# benchmarks) then share the pool size of runs with the default thread count.
default_tensorflow_threads()


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


#: ``runtime.keras_mode`` values: how the training steps execute
KERAS_MODES = ("graph", "eager", "xla")


def _step_function(fn, signature: list[tf.TensorSpec], mode: str):
    """``fn`` as a ``tf.function`` (``"graph"``), an XLA-compiled one (``"xla"``) or eager.

    Eager calls convert their arguments as the signature would, so every mode gets the
    same dtypes.
    """
    if mode != "eager":
        return tf.function(fn, input_signature=signature, jit_compile=mode == "xla")

    def eager(*args):
        return fn(*(tf.convert_to_tensor(arg, dtype=spec.dtype)
                    for arg, spec in zip(args, signature, strict=True)))

    return eager


def _optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=cfg.lr)
    return keras.optimizers.SGD(learning_rate=cfg.lr, momentum=cfg.momentum)


class KerasTrainer:
    """Local training of a Keras model (see :class:`clients.trainer.Trainer`)."""

    def __init__(self, spec: ModelSpec, cfg: TrainConfig, *, private: bool = False,
                 mode: str = "graph") -> None:
        if mode not in KERAS_MODES:
            raise ValueError(f"unknown Keras mode '{mode}'; allowed: {', '.join(KERAS_MODES)}")
        self.mode = mode
        self.spec = spec
        self.private = private
        self.model = build_model(spec)
        self.optimizer = _optimizer(cfg)
        self.optimizer.build(self.model.trainable_variables)
        self._optimizer_start = [v.numpy() for v in self.optimizer.variables]
        # Mean over the real examples of a batch: padded entries carry sample weight 0.
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight")
        self._num_weights = sum(int(np.prod(v.shape)) for v in self.model.trainable_variables)
        self._seed_generators = [
            layer.seed_generator for layer in self.model.layers
            if isinstance(layer, keras.layers.Dropout)
        ]
        x_spec = tf.TensorSpec((None, *spec.input_shape), tf.float32)
        y_spec = tf.TensorSpec((None,), tf.int64)
        # FedProx anchor: the global weights a round starts from.
        self._anchor = [tf.Variable(v, trainable=False) for v in self.model.trainable_variables]
        # SCAFFOLD's c - c_i, added to every step's gradient (zeros: no correction; adding
        # 0.0 leaves every gradient's value as it was).
        self._correction = [tf.Variable(tf.zeros_like(v), trainable=False)
                            for v in self.model.trainable_variables]
        self._corrected = False
        signature = [x_spec, y_spec, tf.TensorSpec((None, None), tf.int64),
                     tf.TensorSpec((), tf.float32)]
        self._train = _step_function(functools.partial(self._train_steps, proximal=False),
                                     signature, mode)
        self._train_proximal = _step_function(
            functools.partial(self._train_steps, proximal=True), signature, mode)
        scalar = tf.TensorSpec((), tf.float32)
        self._private_train = _step_function(
            self._seeded_private_steps,
            [x_spec, y_spec, signature[2], scalar, scalar, scalar, tf.TensorSpec((), tf.int64)],
            mode,
        )
        self._secure_private_train = _step_function(
            self._secure_private_steps,
            [x_spec, y_spec, signature[2], tf.TensorSpec((None, self._num_weights), tf.float32),
             scalar, scalar],
            mode,
        )
        int64 = tf.TensorSpec((), tf.int64)
        self._seeded_noise = tf.function(self._draw_seeded_noise,
                                         input_signature=[int64, int64, int64, scalar])
        self._logits = tf.function(
            lambda x: self.model(x, training=False), input_signature=[x_spec]
        )

    def get_weights(self) -> list[np.ndarray]:
        return self.model.get_weights()

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.model.set_weights(weights)

    def _train_steps(self, x: tf.Tensor, y: tf.Tensor, schedule: tf.Tensor,
                     proximal_mu: tf.Tensor, *, proximal: bool) -> tf.Tensor:
        variables = self.model.trainable_variables
        total = tf.constant(0.0)
        for row in tf.range(tf.shape(schedule)[0]):
            idx = schedule[row]
            mask = tf.cast(idx != PAD, tf.float32)
            safe = tf.maximum(idx, 0)
            xb, yb = tf.gather(x, safe), tf.gather(y, safe)
            with tf.GradientTape() as tape:
                loss = self.loss_fn(yb, self.model(xb, training=True), sample_weight=mask)
                objective = loss
                if proximal:  # FedProx (Li et al. 2020): (mu/2) ||w - w_global||^2
                    objective += proximal_mu / 2 * tf.add_n([
                        tf.reduce_sum(tf.square(v - a))
                        for v, a in zip(variables, self._anchor, strict=True)])
            grads = self._corrected_gradients(tape.gradient(objective, variables))
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            total += loss
        return total / tf.cast(tf.shape(schedule)[0], tf.float32)

    def _corrected_gradients(self, grads: list[tf.Tensor]) -> list[tf.Tensor]:
        return [g + c for g, c in zip(grads, self._correction, strict=True)]

    def _set_correction(self, correction: list[np.ndarray] | None) -> None:
        """Load SCAFFOLD's ``c - c_i`` for this call (``None``: zeros)."""
        if correction is None and not self._corrected:
            return
        for variable, value in zip(self._correction, correction or
                                   [np.zeros(v.shape, np.float32) for v in self._correction],
                                   strict=True):
            variable.assign(value)
        self._corrected = correction is not None

    def clipped_gradient_sum(
        self, xb: tf.Tensor, yb: tf.Tensor, mask: tf.Tensor, clip: tf.Tensor
    ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Sum over the batch of per-example gradients clipped to L2 norm ``clip``.

        ``mask`` (0/1 per example) drops padding rows. Returns the sums and the mean loss
        of the unmasked examples.
        """
        losses, sums = clipped_gradient_sum(self.model, xb, yb, mask, clip)
        mean_loss = tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
        return sums, mean_loss

    def noisy_gradient(
        self, xb: tf.Tensor, yb: tf.Tensor, mask: tf.Tensor, noise_std: tf.Tensor,
        clip: tf.Tensor, expected_batch: tf.Tensor, seed: tf.Tensor,
    ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """DP-SGD gradient: (clipped sum + N(0, noise_std^2)) / expected_batch, seeded."""
        sums, mean_loss = self.clipped_gradient_sum(xb, yb, mask, clip)
        sizes = [tf.size(total) for total in sums]
        noise = tf.random.stateless_normal(
            tf.reshape(tf.add_n(sizes), (1,)), seed=tf.stack([seed, tf.constant(0, tf.int64)]),
            stddev=noise_std,
        )
        return _add_noise(sums, noise, expected_batch), mean_loss

    def _private_steps(self, x, y, schedule, gradient):
        """One DP-SGD step per row; ``gradient(row, xb, yb, mask)`` gives the noisy mean.

        Returns the summed mean loss of the steps and how many steps had examples.
        """
        variables = self.model.trainable_variables
        total, nonempty = tf.constant(0.0), tf.constant(0.0)
        for row in tf.range(tf.shape(schedule)[0]):
            idx = schedule[row]
            mask = tf.cast(idx != PAD, tf.float32)
            safe = tf.maximum(idx, 0)
            grads, loss = gradient(row, tf.gather(x, safe), tf.gather(y, safe), mask)
            # SCAFFOLD corrects the privatized gradient (post-processing; clients.scaffold)
            grads = self._corrected_gradients(grads)
            self.optimizer.apply_gradients(zip(grads, variables, strict=True))
            total += loss  # 0 for an empty batch, which the count leaves out
            nonempty += tf.minimum(tf.reduce_sum(mask), 1.0)
        return tf.stack([total, nonempty])

    def _seeded_private_steps(self, x, y, schedule, noise_std, clip, expected_batch, seed):
        def gradient(row, xb, yb, mask):
            step_seed = seed * 1_000_003 + tf.cast(row, tf.int64)
            return self.noisy_gradient(xb, yb, mask, noise_std, clip, expected_batch,
                                       step_seed)

        return self._private_steps(x, y, schedule, gradient)

    def _secure_private_steps(self, x, y, schedule, noise, clip, expected_batch):
        def gradient(row, xb, yb, mask):
            sums, loss = self.clipped_gradient_sum(xb, yb, mask, clip)
            return _add_noise(sums, noise[row], expected_batch), loss

        return self._private_steps(x, y, schedule, gradient)

    def _fit_secure(self, x: np.ndarray, y: np.ndarray, schedule: np.ndarray,
                    dp: SampleDPPlan, *, seed: int | None = None) -> tf.Tensor:
        """DP-SGD with noise drawn before each compiled call and fed to it.

        The noise comes from the OS's CSPRNG, or with ``seed`` from the same seeded
        stateless draws as the in-loop path (XLA implements ``stateless_normal``
        differently, so ``keras_mode = "xla"`` draws it outside the compiled loop). The
        rows go in chunks of about 2^20 noise values (4 MB of float32; the float64 draws
        behind them peak near 100 MB), one compiled call per chunk.
        """
        std = dp.noise_multiplier * dp.max_grad_norm
        rows = max(1, (1 << 20) // self._num_weights)
        sums = tf.zeros(2)
        for start in range(0, len(schedule), rows):
            chunk = schedule[start : start + rows]
            if seed is None:
                noise = gaussian((len(chunk), self._num_weights), std, None).astype(np.float32)
            else:
                noise = self._seeded_noise(np.int64(start), np.int64(len(chunk)),
                                           np.int64(seed), np.float32(std))
            sums += self._secure_private_train(x, y, chunk, noise, np.float32(dp.max_grad_norm),
                                               np.float32(dp.expected_batch))
        return sums

    def _draw_seeded_noise(self, start, rows, seed, std):
        """The noise rows ``start .. start + rows - 1`` of the seeded in-loop path."""
        def row_noise(row):
            step_seed = seed * 1_000_003 + row
            return tf.random.stateless_normal(
                (self._num_weights,), seed=tf.stack([step_seed, tf.constant(0, tf.int64)]),
                stddev=std)

        return tf.map_fn(row_noise, tf.range(start, start + rows), fn_output_signature=tf.float32)

    def _reset_state(self, seed: int) -> None:
        # A fresh optimizer each round (as FedAvg clients do) without retracing the step.
        for variable, start in zip(self.optimizer.variables, self._optimizer_start, strict=True):
            variable.assign(start)
        for generator in self._seed_generators:
            generator.state.assign(np.array([seed, 0], dtype=generator.state.dtype))

    def fit(self, x: np.ndarray, y: np.ndarray, schedule: np.ndarray, *, seed: int,
            dp: SampleDPPlan | None = None, proximal_mu: float = 0.0,
            secure_rng: bool = False, correction: list[np.ndarray] | None = None) -> float:
        if (dp is not None) != self.private:
            raise ValueError("a private trainer needs a DP plan, a plain one must not get one")
        self._reset_state(seed)
        self._set_correction(correction)
        if self.mode == "xla":
            schedule = _pad_width(schedule)
        if dp is None and not proximal_mu:
            return float(self._train(x, y, schedule, np.float32(0.0)))
        if dp is None:
            for anchor, variable in zip(self._anchor, self.model.trainable_variables,
                                        strict=True):
                anchor.assign(variable)
            return float(self._train_proximal(x, y, schedule, np.float32(proximal_mu)))
        if secure_rng or self.mode == "xla":
            total, nonempty = self._fit_secure(
                x, y, schedule, dp, seed=None if secure_rng else seed).numpy()
        else:
            total, nonempty = self._private_train(
                x, y, schedule, np.float32(dp.noise_multiplier * dp.max_grad_norm),
                np.float32(dp.max_grad_norm), np.float32(dp.expected_batch), np.int64(seed),
            ).numpy()
        return float(total) / max(float(nonempty), 1.0)

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


def _pad_width(schedule: np.ndarray) -> np.ndarray:
    """``schedule`` padded with :data:`PAD` to a power-of-two width (same steps, same values).

    XLA compiles once per input shape; Poisson batches give every round a new width.
    """
    width = schedule.shape[1] if schedule.ndim == 2 else 0
    bucket = 1 << max(width - 1, 0).bit_length()
    if schedule.ndim != 2 or bucket == width:
        return schedule
    padded = np.full((schedule.shape[0], bucket), PAD, dtype=schedule.dtype)
    padded[:, :width] = schedule
    return padded


def _add_noise(sums: list[tf.Tensor], noise: tf.Tensor,
               expected_batch: tf.Tensor) -> list[tf.Tensor]:
    """(clipped sums + flat ``noise`` split per variable) / expected batch."""
    sizes = [tf.size(total) for total in sums]
    return [(total + tf.reshape(part, tf.shape(total))) / expected_batch
            for total, part in zip(sums, tf.split(noise, sizes), strict=True)]
