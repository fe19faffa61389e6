"""What a run's ε rests on, stated in ``privacy.json`` beside the numbers.

Every ε the ledger prints is computed for the Poisson-subsampled Gaussian mechanism
(:mod:`sandbox.core.privacy.accounting`). This module says, for a given config, which
accountant that was, whether the sampling the run actually performed matches it, and
whether noise and samples were secret and fresh (``privacy.noise``): with seeded noise
no ε is an upper bound (:func:`epsilon_caveats`).
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


_NOISE_SOURCES = {
    "secure": ("privacy.noise = 'secure': DP-SGD noise and batches, the server's noise and "
               "the Poisson client sample of client-level DP drawn fresh from the OS's "
               "CSPRNG (os.urandom) in every run: independent across runs, not reproducible"),
    "seeded": ("privacy.noise = 'seeded': drawn from generators seeded by the run's seed, "
               "reproducible bit for bit but NOT PRIVATE: whoever knows the seed can "
               "subtract the noise and rebuild the samples, and runs of one seed share "
               "them, so ε is not an upper bound"),
}


def accounting_assumptions(cfg: Config) -> dict[str, str | bool]:
    """The accountant, the sampling each DP mechanism performs, and the noise source.

    ``sample_level_upper_bound`` / ``client_level_upper_bound``: whether that scope's ε
    is a proven upper bound for what the run did (the sampling is the Poisson sampling
    the accountant assumes, and noise and sample are secret from whoever knows the seed).
    """
    sample, client = cfg.privacy.sample, cfg.privacy.client
    secure = cfg.privacy.noise == "secure"
    out: dict[str, str | bool] = {"accountant": _ACCOUNTANTS[cfg.privacy.accountant]}
    if sample.enabled:
        out["sample_level_sampling"] = (
            "Poisson: each example joins each step's batch independently with rate "
            "q = batch_size / n (the sampling the accountant assumes)" if sample.poisson else
            "shuffled fixed-size batches, accounted as if Poisson with q = batch_size / n: "
            "an approximation, not a proven upper bound for this sampling")
        out["sample_level_upper_bound"] = sample.poisson and secure
    if client.mode != "off":
        out.update(_client_level(cfg))
        out["client_level_upper_bound"] = secure
    if cfg.privacy.any_dp:
        out["noise_source"] = _NOISE_SOURCES[cfg.privacy.noise]
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
