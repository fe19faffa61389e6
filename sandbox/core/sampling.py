"""Which clients take part in a round: a pure function of (seed, round, purpose, clients).

Flower's strategies sample nodes with the process-wide ``random`` module, so the clients
of a round depended on whatever else had consumed it (building a Keras model does) and
on the runtime's node ids. Here the choice depends only on the run seed, the round, the
purpose (train or evaluate) and the partition ids available, through its own
``numpy`` generator; the server side (:mod:`strategies.sampling`) hands the chosen nodes
to the strategy, so every strategy, framework and backend trains the same clients.

Two designs:

* :func:`clients_for_round`: fixed-size sampling without replacement,
  ``max(int(n * fraction), minimum)`` clients, as Flower's strategies size it, drawn
  uniformly (every run without client-level DP, and evaluation always);
* :func:`poisson_clients_for_round`: Poisson sampling, each client independently with
  probability ``rate`` (training under client-level DP: the sampling that the
  subsampled-Gaussian accountant assumes, McMahan et al. 2018, "Learning Differentially
  Private Recurrent Language Models"). The number of clients varies from round to round
  and may be zero.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sandbox.core.csprng import secure_uniform

PURPOSES = {"train": 0, "evaluate": 1}
# Leading word of the Poisson sampler's seed: numpy's SeedSequence ignores trailing zero
# words ([s, r, 0] == [s, r]), so a tag in front keeps this stream apart from every other
# (seed, round, ...) generator of a run.
POISSON_TAG = 0x9015_5011


def sample_size(num_available: int, fraction: float, minimum: int = 1) -> int:
    """How many of ``num_available`` clients a round with ``fraction`` samples."""
    if fraction <= 0:
        return 0
    return min(max(int(num_available * fraction), minimum), num_available)


def clients_for_round(seed: int, server_round: int, purpose: str,
                      partition_ids: Iterable[int], fraction: float,
                      minimum: int = 1) -> list[int]:
    """The partition ids that take part in ``server_round`` for ``purpose``, sorted.

    Parameters
    ----------
    seed : int
        The run seed.
    server_round : int
        1-based round.
    purpose : {"train", "evaluate"}
        Training and evaluation draw independent samples.
    partition_ids : iterable of int
        The clients available this round.
    fraction : float
        ``federation.fraction_train`` or ``fraction_evaluate``.
    minimum : int
        At least this many (if available).
    """
    available = sorted(set(int(p) for p in partition_ids))
    size = sample_size(len(available), fraction, minimum)
    if size == len(available):
        return available
    rng = np.random.default_rng(np.random.SeedSequence([seed, server_round, PURPOSES[purpose]]))
    return sorted(int(p) for p in rng.choice(available, size=size, replace=False))


def poisson_clients_for_round(seed: int, server_round: int, purpose: str,
                              partition_ids: Iterable[int], rate: float, *,
                              secure: bool = False) -> list[int]:
    """The partition ids that a Poisson draw with ``rate`` includes in ``server_round``.

    Each client is included independently with probability ``rate``; whether partition
    ``p`` is included depends only on (seed, round, purpose, p), not on which other
    clients are available. ``rate = 1`` includes everybody; the result may be empty.

    Parameters
    ----------
    seed : int
        The run seed.
    server_round : int
        1-based round.
    purpose : {"train", "evaluate"}
        Independent streams per purpose.
    partition_ids : iterable of int
        The clients available this round.
    rate : float
        Inclusion probability q in [0, 1] (``federation.fraction_train``).
    secure : bool
        Draw from :func:`os.urandom` instead (``privacy.noise = "secure"``, the default):
        amplification by sampling needs the sample to be secret, also from whoever knows
        the seed, and fresh in every run. Not reproducible.

    References
    ----------
    McMahan, Ramage, Talwar & Zhang (2018), "Learning Differentially Private Recurrent
    Language Models", ICLR (DP-FedAvg: users sampled independently with probability q).
    """
    available = sorted(set(int(p) for p in partition_ids))
    if rate >= 1 or not available:
        return available
    # One uniform per partition id (indexed by the id itself), so a client's draw does not
    # shift when the set of available clients changes.
    size = available[-1] + 1
    if secure:
        uniforms = secure_uniform(size)
    else:
        sequence = np.random.SeedSequence([POISSON_TAG, seed, server_round, PURPOSES[purpose]])
        uniforms = np.random.default_rng(sequence).random(size)
    return [p for p in available if uniforms[p] < rate]
