"""Gaussian noise for DP mechanisms: from a seeded generator, or from the OS's CSPRNG.

``privacy.secure_rng = false`` (default): noise comes from ``numpy.random.Generator``
objects seeded from the run's seed, so a run is reproducible bit for bit, and anyone who
knows the seed can subtract the noise. ``privacy.secure_rng = true``: uniform bits come
from :func:`os.urandom` (the operating system's cryptographically secure generator) and
become normal variates by the Box-Muller transform (Box & Muller 1958), vectorized.
Floating-point attacks on the noise's low bits (Mironov 2012) are not addressed here.
"""

from __future__ import annotations

import os

import numpy as np

_UNIT = 2.0 ** -53  # spacing of 53-bit uniforms in [0, 1)


def secure_standard_normal(size: int) -> np.ndarray:
    """``size`` independent N(0, 1) float64 draws from :func:`os.urandom`."""
    pairs = (size + 1) // 2
    bits = np.frombuffer(os.urandom(16 * pairs), dtype=np.uint64).reshape(2, pairs) >> 11
    u1 = (bits[0].astype(np.float64) + 1.0) * _UNIT  # (0, 1]: log is finite
    u2 = bits[1].astype(np.float64) * _UNIT
    radius = np.sqrt(-2.0 * np.log(u1))
    angle = 2.0 * np.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]


def gaussian(shape: tuple[int, ...] | int, std: float,
             rng: np.random.Generator | None) -> np.ndarray:
    """N(0, std²) noise of ``shape``: from ``rng``, or securely when ``rng`` is ``None``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if rng is not None:
        return rng.normal(0.0, std, shape)
    return std * secure_standard_normal(int(np.prod(shape, dtype=np.int64))).reshape(shape)
