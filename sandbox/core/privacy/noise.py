"""DP randomness: from the OS's CSPRNG (``privacy.noise = "secure"``) or a seeded generator.

``privacy.noise = "secure"`` (default): uniform bits come fresh from :func:`os.urandom`
in every run (:func:`sandbox.core.csprng.secure_uniform`) and become normal
variates by the Box-Muller transform (Box & Muller 1958), vectorized; each secure noise
value is the sum of four such draws halved (again N(0, std²)), which fills the gaps in
the set of floating-point values one sampler can output: the mitigation of Holohan &
Braghin (2021, "Secure random sampling in differential privacy") that Opacus'
``secure_mode`` uses against the attacks of Jin et al. (2022). No formal floating-point
analysis (Mironov 2012) is claimed.

``privacy.noise = "seeded"``: noise comes from ``numpy.random.Generator`` objects seeded
from the run's seed, so a run is reproducible bit for bit, but NOT PRIVATE: anyone who
knows the seed can subtract the noise, and two runs of one seed carry the same noise (the
difference of their releases is noise-free), so no ε of such a run, or of a composition
that includes one, is an upper bound.
"""

from __future__ import annotations

import numpy as np

from sandbox.core.csprng import UNIT, secure_uniform

_SECURE_DRAWS = 4  # Box-Muller draws summed per secure noise value (as secure_mode)


def secure_standard_normal(size: int) -> np.ndarray:
    """``size`` independent N(0, 1) float64 draws (one Box-Muller each) from
    :func:`os.urandom`."""
    pairs = (size + 1) // 2
    uniforms = secure_uniform(2 * pairs).reshape(2, pairs)
    radius = np.sqrt(-2.0 * np.log(uniforms[0] + UNIT))  # (0, 1]: log is finite
    angle = 2.0 * np.pi * uniforms[1]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:size]


def gaussian(shape: tuple[int, ...] | int, std: float,
             rng: np.random.Generator | None) -> np.ndarray:
    """N(0, std²) noise of ``shape``: from ``rng``, or securely when ``rng`` is ``None``
    (the sum of four secure draws, halved)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if rng is not None:
        return rng.normal(0.0, std, shape)
    size = int(np.prod(shape, dtype=np.int64))
    draws = secure_standard_normal(_SECURE_DRAWS * size).reshape(_SECURE_DRAWS, size)
    return (std * draws.sum(axis=0) / np.sqrt(_SECURE_DRAWS)).reshape(shape)
