"""Means with confidence intervals over seeds: what every table and plot over seeds shows.

A figure from one seed shows one draw of the data split, initial model and client
sampling; differences between settings smaller than the spread over seeds are noise a
reader cannot see. :func:`mean_ci` gives the mean and a two-sided Student-t confidence
interval of the mean (the seeds are independent draws; the interval assumes their mean
is roughly normal, which is the usual reading for a handful of seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values and the half-width of its confidence interval.

    ``half_width`` is ``None`` for one value (no interval can be estimated).
    """

    mean: float
    half_width: float | None
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def format(self, digits: int = 4) -> str:
        """``"0.9123 ± 0.0081 (n=5)"``; ``"0.9123 (n=1, no CI)"`` for a single seed."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (n=1, no CI)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and Student-t confidence interval of ``values`` (one per seed).

    Raises
    ------
    ValueError
        No values, a non-finite value, or ``confidence`` outside (0, 1).
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_ci needs at least one value")
    if not all(math.isfinite(v) for v in data):
        raise ValueError(f"mean_ci got a non-finite value: {data}")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return MeanCI(mean, None, 1, confidence)
    variance = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
    quantile = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1))
    return MeanCI(mean, quantile * math.sqrt(variance / n), n, confidence)
