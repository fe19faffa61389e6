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


def client_dp_rate(cfg: Config) -> tuple[int, float]:
    """Clients per round and the sampling rate used to account client-level DP."""
    sampled = cfg.federation.clients_per_round(cfg.data.num_clients)
    return sampled, sampled / cfg.data.num_clients
