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
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sandbox.core.privacy.accounting import ACCOUNTANTS, epsilon

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

    @property
    def entry(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass
class PrivacyLedger:
    delta: float
    mechanisms: list[Mechanism] = field(default_factory=list)
    data_fingerprint: str = ""

    def add(self, mechanism: Mechanism) -> None:
        self.mechanisms.append(mechanism)

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
        """Final ε per scope under every accountant, plus naive per-source composition."""
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
        return {"delta": self.delta, "composition": COMPOSITION, "scopes": scopes}

    def to_json(self) -> dict:
        return {
            "delta": self.delta,
            "data_fingerprint": self.data_fingerprint,
            "composition": COMPOSITION,
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
        )

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        return cls.from_json(json.loads(Path(path).read_text()))

    @classmethod
    def compose(cls, ledgers: Iterable[PrivacyLedger], *, delta: float | None = None,
                sources: Iterable[str] | None = None) -> PrivacyLedger:
        """One ledger over runs/trials on the same data (same ``data_fingerprint``).

        ``sources`` names each ledger's mechanisms (default: their own source, else
        ``part-<i>``); the naive per-source sum in :meth:`report` uses these names.
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
