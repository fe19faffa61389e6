"""What each DP mechanism of a run will be, derived from the config alone.

Clients and the server both call these functions, so the server knows each client's
DP-SGD mechanism (for the ledger and the budget) without trusting client reports.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sandbox.core.privacy.accounting import noise_for_target

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.data import FederatedData


@dataclass(frozen=True)
class SampleDPPlan:
    """DP-SGD for one client and one round.

    ``sample_rate`` is the Poisson rate q = batch / n (each step includes each example
    independently with probability q), ``expected_batch`` the normalizer of the noisy
    gradient sum and ``steps`` the number of noisy steps per round.
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    expected_batch: int
    steps: int
    poisson: bool


def sample_dp_plan(cfg: Config, num_examples: int) -> SampleDPPlan:
    """DP-SGD parameters of a client holding ``num_examples`` training examples."""
    return _sample_dp_plan(cfg.privacy, cfg.train, cfg.rounds, num_examples)


def sample_dp_plans(cfg: Config, data: FederatedData) -> dict[int, SampleDPPlan]:
    """Every client's plan by partition id (empty without sample-level DP)."""
    if not cfg.privacy.sample.enabled:
        return {}
    return {pid: sample_dp_plan(cfg, len(c.y_train)) for pid, c in enumerate(data.clients)}


@functools.lru_cache(maxsize=4096)
def _sample_dp_plan(privacy, train, rounds: int, num_examples: int) -> SampleDPPlan:
    batch, steps = train.local_work(num_examples)
    rate = batch / num_examples
    sample = privacy.sample
    noise = sample.noise_multiplier
    if sample.target_epsilon > 0:
        # Calibrated so that a client training in every round ends at exactly ε.
        noise = noise_for_target(
            target_epsilon=sample.target_epsilon, delta=privacy.delta, sample_rate=rate,
            steps=steps * rounds, accountant=privacy.accountant,
        )
    return SampleDPPlan(noise, sample.max_grad_norm, rate, batch, steps, sample.poisson)


@dataclass(frozen=True)
class ClientDPPlan:
    """Client-level DP of one run: DP-FedAvg (McMahan et al. 2018) with fixed clipping or
    adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with
    Adaptive Clipping", Alg. 1).

    ``noise_multiplier`` z is what the ledger accounts. Adaptive clipping spends part of
    it on the noised clipped count (std ``clipped_count_stddev`` σ_b, sensitivity ½), so
    the update sum gets the larger ``update_noise_multiplier``
    z_Δ = (z⁻² − (2σ_b)⁻²)^(−½); for fixed clipping z_Δ = z and σ_b = 0. Each client is
    sampled independently with ``sample_rate`` q; the estimator divides by the expected
    number of clients ``expected_clients`` = qN, a constant.
    """

    mode: str
    noise_multiplier: float
    update_noise_multiplier: float
    clipped_count_stddev: float
    clipping_norm: float
    sample_rate: float
    num_clients: int

    @property
    def adaptive(self) -> bool:
        return self.mode.endswith("adaptive")

    @property
    def expected_clients(self) -> float:
        return self.sample_rate * self.num_clients


def client_dp_plan(cfg: Config) -> ClientDPPlan:
    """The client-level DP mechanism of ``cfg`` (``privacy.client.mode`` must not be off).

    Raises
    ------
    ValueError
        For adaptive clipping when z ≥ 2σ_b (no update noise can make up the budget).
    """
    dp = cfg.privacy.client
    if dp.mode == "off":
        raise ValueError("privacy.client.mode is off: there is no client-level DP plan")
    rate, num_clients = cfg.federation.fraction_train, cfg.data.num_clients
    z = dp.noise_multiplier
    if not dp.mode.endswith("adaptive"):
        return ClientDPPlan(dp.mode, z, z, 0.0, dp.clipping_norm, rate, num_clients)
    stddev = dp.clipped_count_stddev or rate * num_clients / 20  # Andrew et al.: m / 20
    if z >= 2 * stddev:
        raise ValueError(
            f"privacy.client.noise_multiplier={z} needs privacy.client.clipped_count_stddev "
            f"> {z / 2:g} for adaptive clipping (Andrew et al. 2021); it is {stddev:g}")
    update = (z ** -2 - (2 * stddev) ** -2) ** -0.5
    return ClientDPPlan(dp.mode, z, update, stddev, dp.clipping_norm, rate, num_clients)


def client_dp_rate(cfg: Config) -> tuple[float, float]:
    """Expected clients per round qN and the Poisson rate q = ``fraction_train``.

    Under client-level DP the training clients are Poisson-sampled with exactly this rate
    (:func:`sandbox.core.sampling.poisson_clients_for_round`), so the ledger's rate is
    the sampling performed, not an approximation of it.
    """
    rate = cfg.federation.fraction_train
    return rate * cfg.data.num_clients, rate
