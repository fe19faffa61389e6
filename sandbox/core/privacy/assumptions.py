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
        out.update(_client_level(cfg))
    if sample.enabled or client.mode != "off":
        out["noise_source"] = (
            "OS CSPRNG (os.urandom) / Opacus secure_mode for the noise (and the Poisson "
            "client sample of client-level DP): not reproducible"
            if cfg.privacy.secure_rng else
            "seeded generators: reproducible from the run's seed, which suits research but "
            "is not a guarantee against anyone who knows the seed")
    return out


def epsilon_caveats(cfg: Config) -> list[str]:
    """Why the run's ε is *not* an upper bound (empty: it is one).

    Shown wherever ε is read: run.json, the console, sweep columns, search objectives.
    """
    if not cfg.privacy.any_dp:
        return []
    caveats = []
    if cfg.privacy.sample.enabled and not cfg.privacy.sample.poisson:
        caveats.append("privacy.sample.poisson = false: shuffled fixed-size batches are "
                       "accounted as if Poisson-sampled")
    if cfg.privacy.noise == "seeded":
        caveats.append("privacy.noise = 'seeded': the noise follows from the seed, so it "
                       "can be subtracted and runs of one seed share it")
    return caveats


def _client_level(cfg: Config) -> dict[str, str | bool]:
    """Client-level DP: sampling, adjacency, what the guarantee covers."""
    rate, clients = cfg.federation.fraction_train, cfg.data.num_clients
    sampling = (
        "every client every round (q = 1: no amplification by sampling is claimed)"
        if rate >= 1 else
        f"Poisson: each of the {clients} clients trains in each round independently with "
        f"probability q = fraction_train = {rate:g} (expected {rate * clients:g} per round, "
        "the number varies and may be 0), the sampling the accountant assumes")
    return {
        "client_level_sampling": sampling,
        "client_level_upper_bound": True,
        "client_level_adjacency": (
            "add/remove one client with all of its data; the update sum is divided by the "
            "constant qN (McMahan et al. 2018), each round releases the model even when "
            "nobody took part, and adaptive clipping scales the noise by the norm that "
            "clipped that round (Andrew et al. 2021)"),
        "client_level_releases": (
            "covered: the global models and clipping norms; not covered: which clients "
            "were sampled (participation.json, the clients_sampled / valid_replies counts) "
            "and the clients' aggregated metrics (train loss, federated evaluation); an "
            "adversary who sees the sample loses the amplification by sampling"),
    }
