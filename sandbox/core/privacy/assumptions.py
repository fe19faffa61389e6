"""What a run's ε rests on, stated in ``privacy.json`` beside the numbers.

Every ε the ledger prints is computed for the Poisson-subsampled Gaussian mechanism
(:mod:`sandbox.core.privacy.accounting`). This module says, for a given config, which
accountant that was and whether the sampling the run actually performed matches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.core.privacy.accounting import RDP_ORDERS

if TYPE_CHECKING:
    from sandbox.core.config import Config

_ACCOUNTANTS = {
    "rdp": (f"Renyi DP of the Poisson-subsampled Gaussian (Mironov et al. 2019) at "
            f"{len(RDP_ORDERS)} orders {RDP_ORDERS[0]:g}..{RDP_ORDERS[-1]:g}, converted to "
            "(ε, δ) as in Balle et al. 2020 (Opacus' RDP analysis)"),
    "prv": ("privacy random variables (Gopi, Lee & Wutschitz 2021, Opacus' PRV accountant), "
            "upper estimate with error bound 0.5 % of ε"),
}


def accounting_assumptions(cfg: Config) -> dict[str, str | bool]:
    """The accountant, the sampling each DP mechanism performs, and the noise source."""
    sample, client = cfg.privacy.sample, cfg.privacy.client
    out: dict[str, str | bool] = {"accountant": _ACCOUNTANTS[cfg.privacy.accountant]}
    if sample.enabled:
        out["sample_level_sampling"] = (
            "Poisson: each example joins each step's batch independently with rate "
            "q = batch_size / n (the sampling the accountant assumes)" if sample.poisson else
            "shuffled fixed-size batches, accounted as if Poisson with q = batch_size / n: "
            "an approximation, not a proven upper bound for this sampling")
        out["sample_level_upper_bound"] = sample.poisson
    if client.mode != "off":
        sampled = cfg.federation.clients_per_round(cfg.data.num_clients)
        out["client_level_sampling"] = (
            f"a fixed-size subset of {sampled} of {cfg.data.num_clients} clients per round, "
            "without replacement, accounted as Poisson sampling with q = "
            f"{sampled}/{cfg.data.num_clients} (the usual DP-FedAvg approximation, not a "
            "proven upper bound for this sampling)" if sampled < cfg.data.num_clients else
            "every client every round (q = 1: no amplification by sampling is claimed)")
        out["client_level_upper_bound"] = sampled == cfg.data.num_clients
    if sample.enabled or client.mode != "off":
        out["noise_source"] = (
            "seeded generators: the noise is reproducible from the run's seed, which suits "
            "research but is not a privacy guarantee against anyone who knows the seed")
    return out
