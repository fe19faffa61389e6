"""Per-example gradients of a spec-built Keras model from one batched backward pass.

The trick Opacus uses in torch, written for the layers a :class:`~sandbox.core.models.ModelSpec`
has. The forward pass is run layer by layer keeping each dense/conv layer's input ``a``
and pre-activation output ``z``; one backward pass of the summed loss gives
``b = dL/dz``, whose row *i* only depends on example *i*. Then per example:

* dense: ``dW_i = a_i ⊗ b_i``, ``db_i = b_i``
* conv: ``dK_i = Σ_positions patches(a_i) ⊗ b_i`` (patches as the convolution sees them,
  ``tf.image.extract_patches`` with the same 'SAME' padding), ``db_i = Σ_positions b_i``

This costs one ordinary backward pass plus one contraction per layer, instead of a
backward pass per example (``tf.vectorized_map`` falls back to a while loop for the conv
filter gradient).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _patches(a: tf.Tensor, kernel_shape: tuple[int, ...]) -> tf.Tensor:
    """Convolution input patches, flattened in the kernel's (k..., in) order."""
    if len(kernel_shape) == 4:  # 2-D: (k, k, in, out)
        k = kernel_shape[0]
        return tf.image.extract_patches(a, sizes=[1, k, k, 1], strides=[1, 1, 1, 1],
                                        rates=[1, 1, 1, 1], padding="SAME")
    k = kernel_shape[0]  # 1-D: (k, in, out); treat the sequence as an image of width 1
    patches = tf.image.extract_patches(a[:, :, None, :], sizes=[1, k, 1, 1],
                                       strides=[1, 1, 1, 1], rates=[1, 1, 1, 1],
                                       padding="SAME")
    return patches[:, :, 0, :]


def _forward_records(model: keras.Model, x: tf.Tensor, y: tf.Tensor):
    """Per-example losses and, per dense/conv layer, ``(layer, a, b = dL/dz)``."""
    records = []
    with tf.GradientTape() as tape:
        a = x
        for layer in model.layers:
            if isinstance(layer, keras.layers.Dense):
                z = tf.matmul(a, layer.kernel) + layer.bias
            elif isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
                z = tf.nn.convolution(a, layer.kernel, padding="SAME") + layer.bias
            else:  # pooling, flatten (dropout is off under DP-SGD)
                a = layer(a, training=True)
                continue
            tape.watch(z)
            records.append((layer, a, z))
            a = layer.activation(z)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=a)
        total = tf.reduce_sum(losses)
    outputs = tape.gradient(total, [z for _, _, z in records])
    return losses, [(layer, a, b) for (layer, a, _), b in zip(records, outputs, strict=True)]


def _conv_kernel_grads(layer, a: tf.Tensor, b: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-example ``(B, *kernel.shape)`` and ``(B, out)`` gradients of a conv layer."""
    shape = tuple(layer.kernel.shape)
    patches = _patches(a, shape)
    spatial = patches.shape.rank - 2
    flat_patches = tf.reshape(patches, (tf.shape(patches)[0], -1, patches.shape[-1]))
    flat_b = tf.reshape(b, (tf.shape(b)[0], -1, b.shape[-1]))
    kernel = tf.einsum("bpi,bpo->bio", flat_patches, flat_b)
    return tf.reshape(kernel, (-1, *shape)), tf.reduce_sum(b, axis=list(range(1, 1 + spatial)))


def per_example_gradients(
    model: keras.Model, x: tf.Tensor, y: tf.Tensor
) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """Per-example losses ``(B,)`` and gradients ``[(B, *var.shape)]`` in variable order."""
    losses, records = _forward_records(model, x, y)
    grads: list[tf.Tensor] = []
    for layer, a, b in records:
        if isinstance(layer, keras.layers.Dense):
            grads += [tf.einsum("bi,bo->bio", a, b), b]
        else:
            grads += list(_conv_kernel_grads(layer, a, b))
    return losses, grads


def clipped_gradient_sum(
    model: keras.Model, x: tf.Tensor, y: tf.Tensor, weights: tf.Tensor, clip: tf.Tensor
) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """``Σ_i weights_i · min(1, clip / ||g_i||) · g_i`` and the per-example losses.

    Dense layers never materialize per-example gradients: ``||a_i ⊗ b_i||² =
    ||a_i||² ||b_i||²`` (the "ghost norm", Goodfellow 2015) and the weighted sum is one
    matrix product. Conv layers use :func:`_conv_kernel_grads`.
    """
    losses, records = _forward_records(model, x, y)
    squared = tf.zeros_like(losses)
    parts = []
    for layer, a, b in records:
        b_sq = tf.reduce_sum(tf.square(b), axis=1) if isinstance(
            layer, keras.layers.Dense) else None
        if b_sq is not None:
            squared += tf.reduce_sum(tf.square(a), axis=1) * b_sq + b_sq
            parts.append(("dense", a, b))
        else:
            kernel, bias = _conv_kernel_grads(layer, a, b)
            squared += (tf.reduce_sum(tf.reshape(tf.square(kernel), (tf.shape(kernel)[0], -1)),
                                      axis=1) + tf.reduce_sum(tf.square(bias), axis=1))
            parts.append(("conv", kernel, bias))
    factors = weights * tf.minimum(1.0, clip / (tf.sqrt(squared) + 1e-6))
    sums = []
    for kind, first, second in parts:
        if kind == "dense":
            sums += [tf.matmul(first * factors[:, None], second, transpose_a=True),
                     tf.linalg.matvec(second, factors, transpose_a=True)]
        else:
            sums += [tf.tensordot(factors, first, axes=1), tf.tensordot(factors, second, axes=1)]
    return losses, sums
