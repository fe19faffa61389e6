"""Cross-check of the ledger's accountants against Google's ``dp-accounting``.

    python -m benchmarks.crosscheck [--out docs/accountant_crosscheck.md]

For Poisson-subsampled Gaussian compositions on the grid q ∈ {0.001, 0.01, 0.1},
σ ∈ {0.8, 1.1, 2.0}, steps ∈ {100, 1000, 10000}:

* ledger RDP ε vs ``dp_accounting.rdp.RdpAccountant`` at the same orders
  (:data:`~sandbox.core.privacy.accounting.RDP_ORDERS`), and at integer orders only;
* ledger PRV ε vs ``dp_accounting.pld.PLDAccountant``.

``dp-accounting`` is a development dependency (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import warnings
from pathlib import Path

from sandbox.core.privacy.accounting import RDP_ORDERS, epsilon

GRID = list(itertools.product((0.001, 0.01, 0.1), (0.8, 1.1, 2.0), (100, 1000, 10000)))
INTEGER_ORDERS = tuple(range(2, 257))
DELTA = 1e-5


def _rdp_at(q: float, sigma: float, steps: int, orders, delta: float) -> float:
    from opacus.accountants.analysis import rdp

    total = rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(orders))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(rdp.get_privacy_spent(orders=list(orders), rdp=total, delta=delta)[0])


def crosscheck_row(q: float, sigma: float, steps: int, delta: float = DELTA) -> dict:
    import dp_accounting
    from dp_accounting import pld, rdp

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    logging.getLogger("absl").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        google_rdp = rdp.RdpAccountant(list(RDP_ORDERS))
        google_rdp.compose(event)
        google_int = rdp.RdpAccountant(list(INTEGER_ORDERS))
        google_int.compose(event)
        google_pld = pld.PLDAccountant()
        google_pld.compose(event)
        row = {
            "q": q, "sigma": sigma, "steps": steps,
            "ours_rdp": epsilon([(sigma, q, steps)], delta, "rdp"),
            "google_rdp": google_rdp.get_epsilon(delta),
            "ours_rdp_int": _rdp_at(q, sigma, steps, INTEGER_ORDERS, delta),
            "google_rdp_int": google_int.get_epsilon(delta),
            "ours_prv": epsilon([(sigma, q, steps)], delta, "prv"),
            "google_pld": google_pld.get_epsilon(delta),
        }
    row["rdp_rel"] = abs(row["ours_rdp"] / row["google_rdp"] - 1)
    row["rdp_int_rel"] = abs(row["ours_rdp_int"] / row["google_rdp_int"] - 1)
    row["prv_rel"] = abs(row["ours_prv"] / row["google_pld"] - 1)
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| q | σ | steps | ledger RDP | dp-acc RDP (same orders) | Δ | ledger RDP (int orders)"
        " | dp-acc RDP (int orders) | Δ | ledger PRV | dp-acc PLD | Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['q']} | {r['sigma']} | {r['steps']} | {r['ours_rdp']:.4f} | "
            f"{r['google_rdp']:.4f} | {100 * r['rdp_rel']:.2f}% | {r['ours_rdp_int']:.4f} | "
            f"{r['google_rdp_int']:.4f} | {100 * r['rdp_int_rel']:.2f}% | {r['ours_prv']:.4f} | "
            f"{r['google_pld']:.4f} | {100 * r['prv_rel']:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    rows = []
    for q, sigma, steps in GRID:
        rows.append(crosscheck_row(q, sigma, steps))
        r = rows[-1]
        print(f"q={q} σ={sigma} steps={steps}: RDP {r['ours_rdp']:.4f} vs {r['google_rdp']:.4f}"
              f" | PRV {r['ours_prv']:.4f} vs PLD {r['google_pld']:.4f}", flush=True)
    table = markdown(rows)
    if args.out:
        args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
