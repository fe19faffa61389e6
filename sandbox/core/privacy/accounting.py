"""ε(δ) of composed subsampled Gaussian mechanisms, through Opacus' accountants.

A *history* is a tuple of ``(noise_multiplier, sample_rate, steps)`` entries, the same
shape Opacus keeps in ``accountant.history``: every entry is ``steps`` applications of
the Poisson-subsampled Gaussian mechanism with that noise multiplier and sampling rate.
Entries compose adaptively (sequential composition), so one history can hold the
mechanisms of many rounds, many runs or many tuning trials that touch the same data.

Two accountants:

``rdp``
    Rényi DP (Mironov 2017; Mironov, Talwar & Zhang 2019) over a fixed set of orders
    (:data:`RDP_ORDERS`), converted to (ε, δ) with the tighter conversion of Balle et al.
    (2020) as Opacus does.
``prv``
    Privacy random variables (Gopi, Lee & Wutschitz 2021), Opacus' numerical
    composition; the error bound ``eps_error`` is chosen relative to ε (0.5 %, at least
    1e-4) and the upper estimate is reported, so the value is never optimistic.

Opacus is imported when a function is first called.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Iterable

import numpy as np

History = tuple[tuple[float, float, int], ...]

ACCOUNTANTS = ("rdp", "prv")

#: Rényi orders used by the ledger (and by the dp-accounting cross-check): Opacus' default
#: grid from 1.75 up, plus large orders for small ε. Orders below 1.75 only help when
#: ε is far above any useful budget (> 40), and their series do not converge reliably.
RDP_ORDERS: tuple[float, ...] = (
    1.75, *(1 + x / 10 for x in range(8, 100)), *(float(a) for a in range(11, 64)),
    80.0, 96.0, 128.0, 256.0, 512.0,
)


def as_history(entries: Iterable[tuple[float, float, int]]) -> History:
    """Normalize entries and merge neighbours with equal (noise, rate)."""
    merged: list[list] = []
    for noise, rate, steps in entries:
        if steps <= 0:
            continue
        if merged and merged[-1][0] == noise and merged[-1][1] == rate:
            merged[-1][2] += int(steps)
        else:
            merged.append([float(noise), float(rate), int(steps)])
    return tuple((n, r, s) for n, r, s in merged)


def epsilon(history: Iterable[tuple[float, float, int]], delta: float,
            accountant: str = "rdp") -> float:
    """ε at ``delta`` of ``history`` under ``accountant`` (``rdp`` or ``prv``)."""
    hist = as_history(history)
    if not hist:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(hist, delta)
    if accountant == "prv":
        return _prv_epsilon(hist, delta)
    raise ValueError(f"unknown accountant '{accountant}'; allowed: {', '.join(ACCOUNTANTS)}")


@functools.lru_cache(maxsize=4096)
def _rdp_epsilon(history: History, delta: float) -> float:
    from opacus.accountants.analysis import rdp

    total = sum(
        rdp.compute_rdp(q=rate, noise_multiplier=noise, steps=steps, orders=list(RDP_ORDERS))
        for noise, rate, steps in history
    )
    with warnings.catch_warnings():  # "optimal order is the smallest alpha": ε > ~40
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
    return float(eps)


#: Beyond this RDP ε the PRV accountant is not run: its discretization grid grows with ε
#: (σ ≈ 1e-6 asks for petabytes); the RDP value, also an upper bound, is reported as is.
PRV_MAX_EPSILON = 1000.0


@functools.lru_cache(maxsize=1024)
def _prv_epsilon(history: History, delta: float) -> float:
    from opacus.accountants import PRVAccountant

    upper = _rdp_epsilon(history, delta)
    if not math.isfinite(upper) or upper > PRV_MAX_EPSILON:
        return upper  # no meaningful privacy either way; PRV would not fit in memory

    accountant = PRVAccountant()
    accountant.history = [tuple(entry) for entry in history]
    logging.getLogger("opacus").setLevel(logging.ERROR)
    with np.errstate(divide="ignore", invalid="ignore"):  # q = 1 takes log(0) paths
        rough = accountant.get_epsilon(delta, eps_error=0.01)
        if not math.isfinite(rough) or rough <= 0:
            return float(rough)
        error = min(0.01, max(1e-4, 0.005 * rough))
        if error >= 0.01:
            return float(rough)
        return float(accountant.get_epsilon(delta, eps_error=error))


def noise_for_target(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int,
    accountant: str = "rdp", tolerance: float = 0.005,
) -> float:
    """Smallest noise multiplier whose ``steps``-fold composition stays within ε.

    Calibrated with :func:`epsilon` itself (the ledger's accountant, orders and PRV error
    bound), so the ε the ledger reports for the calibrated mechanism is at most
    ``target_epsilon`` and at least ``(1 - tolerance) * target_epsilon``. Bisection on σ;
    the returned σ is always the upper (private enough) end of the bracket.

    Raises
    ------
    ValueError
        If even σ = 1e4 gives more than ``target_epsilon``.
    """
    if target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")

    def eps(sigma: float) -> float:
        return epsilon([(sigma, sample_rate, steps)], delta, accountant)

    low, high = 0.05, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"ε = {target_epsilon:g} at δ = {delta:g} is out of reach for "
                             f"{steps} steps at sampling rate {sample_rate:g}")
    if eps(low) <= target_epsilon:  # the target allows very little noise
        return low
    while high - low > 1e-4 * high:
        mid = (low + high) / 2
        spent = eps(mid)
        if spent > target_epsilon:
            low = mid
        elif spent >= (1 - tolerance) * target_epsilon:
            return mid
        else:
            high = mid
    return high
