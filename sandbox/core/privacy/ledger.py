"""The privacy ledger: every DP mechanism a run applied, and what it costs in ε(δ).

Pure bookkeeping; ε comes from :mod:`sandbox.core.privacy.accounting` (Opacus accountants).

Scopes
------
``client-<pid>``
    Sample-level DP-SGD inside client ``pid``: protects one example of that client's data.
    Each round the client trained adds ``steps`` subsampled Gaussian steps.
``federation``
    Client-level DP (:mod:`strategies.client_dp`): protects one client's whole
    contribution. Each round adds one Poisson-subsampled Gaussian release with rate
    q = ``federation.fraction_train``, the rate the clients were sampled with.

Composition
-----------
Within a scope all entries compose sequentially (RDP: Rényi divergences add; PRV:
privacy random variables convolve); this is valid for adaptively chosen mechanisms, so
rounds, runs and tuning trials that touch the same data compose the same way
(:meth:`PrivacyLedger.compose`). The naive alternative, adding the ε of each part, is
reported beside it for comparison. Different scopes protect different units (an example
of one client vs a whole client) and are reported separately, never added.

What a composed ε rests on
--------------------------
Sequential composition assumes every mechanism draws independent noise (and, for the
subsampled Gaussian, a secret Poisson sample). Each mechanism therefore records its
noise source (``privacy.noise``) and whether its sampling was the Poisson sampling the
accountant assumes. Seeded noise follows from the run's seed: whoever knows the seed
subtracts it, and runs of one seed share it, so subtracting two such releases cancels
the noise entirely; a ledger that holds any seeded mechanism (or one whose source was
not recorded) reports :attr:`PrivacyLedger.caveats` and is not an upper bound
(:attr:`PrivacyLedger.upper_bound`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.core.privacy.accounting import ACCOUNTANTS, epsilon

if TYPE_CHECKING:
    from sandbox.core.config import Config

FEDERATION = "federation"
COMPOSITION = (
    "sequential composition of all mechanisms per scope (adaptive; RDP orders add, "
    "PRV distributions convolve); scopes are separate guarantees"
)


@dataclass(frozen=True)
class Mechanism:
    """``steps`` Poisson-subsampled Gaussian mechanisms applied in one round."""

    scope: str
    kind: str  # "dp-sgd" (sample level) or "client-dp"
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    source: str = ""  # run or trial that applied it
    #: ``privacy.noise`` of the run that applied it: "secure" or "seeded"; "" = not
    #: recorded (ledgers written before the source was, when seeded was the default).
    noise: str = ""
    #: Whether the sampling performed was the Poisson sampling the accountant assumes
    #: (false: DP-SGD on shuffled fixed-size batches, ``privacy.sample.poisson = false``).
    poisson: bool = True

    @property
    def entry(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass
class PrivacyLedger:
    """Mechanisms applied to one data set, and their ε per scope.

    ``noise`` and ``poisson_batches`` are the facts of the run that fills the ledger
    (:meth:`for_config`): :meth:`add` records them on every mechanism that arrives
    without its noise source. A composed ledger keeps each mechanism's own.
    """

    delta: float
    mechanisms: list[Mechanism] = field(default_factory=list)
    data_fingerprint: str = ""
    noise: str = ""
    poisson_batches: bool = True

    @classmethod
    def for_config(cls, cfg: Config, mechanisms: Iterable[Mechanism] = ()) -> PrivacyLedger:
        """A ledger for the mechanisms of a run of ``cfg`` (its δ, data, noise source and
        DP-SGD sampling), holding ``mechanisms``."""
        ledger = cls(delta=cfg.privacy.delta, data_fingerprint=cfg.data_fingerprint(),
                     noise=cfg.privacy.noise, poisson_batches=cfg.privacy.sample.poisson)
        for mechanism in mechanisms:
            ledger.add(mechanism)
        return ledger

    def add(self, mechanism: Mechanism) -> None:
        if not mechanism.noise:  # the ledger's own run applied it
            shuffled = mechanism.kind == "dp-sgd" and not self.poisson_batches
            mechanism = replace(mechanism, noise=self.noise,
                                poisson=mechanism.poisson and not shuffled)
        self.mechanisms.append(mechanism)

    @property
    def caveats(self) -> list[str]:
        """Why the ε of this ledger is *not* an upper bound (empty: it is one)."""
        checks = (
            (lambda m: m.noise == "seeded",
             "seeded noise (privacy.noise = 'seeded') in {}: it follows from the seed, so "
             "whoever knows the seed can subtract it, and runs of one seed share it (their "
             "releases differ by noise-free amounts)"),
            (lambda m: m.noise not in ("secure", "seeded"),
             "noise source not recorded in {} (a ledger written before privacy.noise, when "
             "seeded noise was the default)"),
            (lambda m: not m.poisson,
             "shuffled fixed-size DP-SGD batches in {} (privacy.sample.poisson = false), "
             "accounted as if Poisson-sampled"),
        )
        caveats = []
        for applies, text in checks:
            sources = sorted({m.source or "this run" for m in self.mechanisms if applies(m)})
            if sources:
                shown = ", ".join(sources[:3]) + (
                    f" and {len(sources) - 3} more" if len(sources) > 3 else "")
                caveats.append(text.format(shown))
        return caveats

    @property
    def upper_bound(self) -> bool:
        """Whether every ε this ledger reports is a proven upper bound (no caveats)."""
        return not self.caveats

    @property
    def scopes(self) -> list[str]:
        return sorted({m.scope for m in self.mechanisms}, key=_scope_order)

    def history(self, scope: str, *, up_to_round: int | None = None,
                extra: Iterable[Mechanism] = ()) -> list[tuple[float, float, int]]:
        return [
            m.entry for m in [*self.mechanisms, *extra]
            if m.scope == scope and (up_to_round is None or m.round <= up_to_round)
        ]

    def epsilon(self, scope: str, accountant: str = "rdp", *,
                up_to_round: int | None = None, extra: Iterable[Mechanism] = ()) -> float:
        return epsilon(self.history(scope, up_to_round=up_to_round, extra=extra),
                       self.delta, accountant)

    def round_summary(self, server_round: int, accountant: str) -> dict[str, float]:
        """ε after ``server_round``: federation ε and max/median over client scopes."""
        summary: dict[str, float] = {}
        clients = [s for s in self.scopes if s != FEDERATION]
        if clients:
            values = [self.epsilon(s, accountant, up_to_round=server_round) for s in clients]
            summary["eps_client_max"] = max(values)
            summary["eps_client_median"] = statistics.median(values)
        if FEDERATION in self.scopes:
            summary["eps_federation"] = self.epsilon(FEDERATION, accountant,
                                                     up_to_round=server_round)
        return summary

    def per_round(self, scope: str, accountant: str) -> list[tuple[int, float]]:
        rounds = sorted({m.round for m in self.mechanisms if m.scope == scope})
        return [(r, self.epsilon(scope, accountant, up_to_round=r)) for r in rounds]

    def report(self) -> dict:
        """Final ε per scope under every accountant, plus naive per-source composition,
        and whether they are upper bounds (:attr:`caveats`)."""
        scopes = {}
        for scope in self.scopes:
            entry = {acc: self.epsilon(scope, acc) for acc in ACCOUNTANTS}
            sources = sorted({m.source for m in self.mechanisms if m.scope == scope})
            if len(sources) > 1:
                entry["naive_sum_rdp"] = sum(
                    epsilon([m.entry for m in self.mechanisms
                             if m.scope == scope and m.source == src], self.delta, "rdp")
                    for src in sources
                )
            scopes[scope] = entry
        return {"delta": self.delta, "composition": COMPOSITION, "scopes": scopes,
                "upper_bound": self.upper_bound, "caveats": self.caveats}

    def to_json(self) -> dict:
        return {
            "delta": self.delta,
            "data_fingerprint": self.data_fingerprint,
            "noise": self.noise,
            "poisson_batches": self.poisson_batches,
            "composition": COMPOSITION,
            "upper_bound": self.upper_bound,
            "caveats": self.caveats,
            "mechanisms": [asdict(m) for m in self.mechanisms],
            "report": self.report() if self.mechanisms else {"scopes": {}},
        }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, payload: dict) -> PrivacyLedger:
        return cls(
            delta=float(payload["delta"]),
            mechanisms=[Mechanism(**m) for m in payload["mechanisms"]],
            data_fingerprint=payload.get("data_fingerprint", ""),
            noise=payload.get("noise", ""),
            poisson_batches=payload.get("poisson_batches", True),
        )

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def compose(cls, ledgers: Iterable[PrivacyLedger], *, delta: float | None = None,
                sources: Iterable[str] | None = None) -> PrivacyLedger:
        """One ledger over runs/trials on the same data (same ``data_fingerprint``).

        ``sources`` names each ledger's mechanisms (default: their own source, else
        ``part-<i>``); the naive per-source sum in :meth:`report` uses these names. Each
        mechanism keeps its noise source, so the composition's :attr:`caveats` name the
        parts whose noise was seeded (or not recorded).
        """
        ledgers = list(ledgers)
        names = list(sources) if sources is not None else [None] * len(ledgers)
        if not ledgers:
            raise ValueError("compose needs at least one ledger")
        prints = {led.data_fingerprint for led in ledgers}
        if len(prints) > 1:
            raise ValueError(
                f"ledgers cover different data (fingerprints {sorted(prints)}); "
                "privacy only composes over mechanisms that touch the same data"
            )
        merged = cls(delta=delta if delta is not None else max(led.delta for led in ledgers),
                     data_fingerprint=prints.pop())
        for index, (led, name) in enumerate(zip(ledgers, names, strict=True)):
            for m in led.mechanisms:
                source = name or m.source or f"part-{index}"
                merged.add(Mechanism(**{**asdict(m), "source": source}))
        return merged


def _scope_order(scope: str) -> tuple[int, int]:
    if scope == FEDERATION:
        return (0, 0)
    return (1, int(scope.rsplit("-", 1)[-1]))
