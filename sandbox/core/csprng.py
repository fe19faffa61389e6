"""Uniform draws from the operating system's CSPRNG (:func:`os.urandom`).

The one source of unpredictable randomness for ``privacy.noise = "secure"`` (the
default): fresh in every run, so no two runs share noise or samples. Secure noise
(:mod:`sandbox.core.privacy.noise`), secret client samples (:mod:`sandbox.core.sampling`)
and secret DP-SGD batches (``clients.schedule.SecureRandom``).
"""

from __future__ import annotations

import os

import numpy as np

UNIT = 2.0 ** -53  # spacing of 53-bit uniforms in [0, 1)


def secure_uniform(size: int) -> np.ndarray:
    """``size`` independent uniform float64 draws in [0, 1), 53 random bits each."""
    bits = np.frombuffer(os.urandom(8 * size), dtype=np.uint64) >> 11
    return bits.astype(np.float64) * UNIT
