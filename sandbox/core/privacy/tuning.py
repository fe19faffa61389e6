"""Privacy of hyperparameter tuning with a random number of trials.

Papernot & Steinke (2022), "Hyperparameter Tuning with Renyi Differential Privacy"
(ICLR), main privacy result for a Poisson-distributed number of trials (their Theorem 2
is the truncated negative binomial case): if each trial's algorithm Q is (λ, ε_λ)-RDP
and (ε̂, δ̂)-DP with e^ε̂ ≤ 1 + 1/(λ−1), and the number of trials K ~ Poisson(μ), then
running Q K times and releasing the best trial is (λ, ε')-RDP with

    ε' = ε_λ + μ·δ̂ + log(μ) / (λ − 1).

The bound does not grow with the number of trials beyond the log(μ) term, unlike the
composition of all trials. It applies only when K is drawn at random (study setting
``trial_distribution = "poisson"``) and only the best trial is released. Q's RDP curve
must hold for every hyperparameter setting, so we take the maximum over the trials'
curves; δ̂ at ε̂ comes from Q's RDP by the standard conversion.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from sandbox.core.privacy.accounting import RDP_ORDERS, as_history


def rdp_curve(history, orders=RDP_ORDERS) -> np.ndarray:
    from opacus.accountants.analysis import rdp

    hist = as_history(history)
    if not hist:
        return np.zeros(len(orders))
    return sum(rdp.compute_rdp(q=q, noise_multiplier=n, steps=s, orders=list(orders))
               for n, q, s in hist)


def _delta_at(curve: np.ndarray, orders: np.ndarray, eps_hat: float) -> float:
    with np.errstate(over="ignore"):
        deltas = np.exp((orders - 1) * (curve - eps_hat))
    deltas = np.where(curve < eps_hat, deltas, 1.0)
    return float(min(1.0, deltas.min()))


def random_stopping_epsilon(histories: list, delta: float, *, mean_trials: float) -> dict:
    """(ε, δ) of tuning with K ~ Poisson(``mean_trials``) trials, each one of ``histories``."""
    from opacus.accountants.analysis import rdp

    orders = np.array(RDP_ORDERS)
    worst = np.max([rdp_curve(h) for h in histories], axis=0)
    tuned = np.full(len(orders), np.inf)
    for index, lam in enumerate(orders):
        eps_hat = math.log1p(1 / (lam - 1))
        delta_hat = _delta_at(worst, orders, eps_hat)
        tuned[index] = worst[index] + mean_trials * delta_hat + math.log(mean_trials) / (lam - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps, best_order = rdp.get_privacy_spent(orders=list(orders), rdp=tuned, delta=delta)
        single, _ = rdp.get_privacy_spent(orders=list(orders), rdp=worst, delta=delta)
    return {"applies": True,
            "method": "Papernot & Steinke 2022, main result for Poisson trial counts",
            "mean_trials": mean_trials, "epsilon": float(eps), "order": float(best_order),
            "epsilon_single_trial": float(single)}
