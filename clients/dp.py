"""Client-side privacy glue: DP-SGD plans and the per-node Opacus accountant.

The accountant of each client lives in the node's ``Context.state`` (a ``ConfigRecord``
holding Opacus' ``accountant.history``), so ε accumulates over every round that client
trained, in any runtime that keeps node state (inline Grid, Ray simulation, SuperNodes),
instead of restarting from zero each round.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

from sandbox.core.privacy import SampleDPPlan, epsilon

ACCOUNTANT_KEY = "dp-accountant"


def load_accountant(context: Context, method: str):
    """The node's Opacus accountant (``rdp`` or ``prv``) with its history restored."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(method)
    record = context.state.get(ACCOUNTANT_KEY)
    if record is not None:
        accountant.history = [
            (float(n), float(q), int(s))
            for n, q, s in zip(record["noise"], record["rate"], record["steps"], strict=True)
        ]
    return accountant


def save_accountant(context: Context, accountant) -> None:
    history = accountant.history
    context.state[ACCOUNTANT_KEY] = ConfigRecord({
        "noise": [float(n) for n, _, _ in history],
        "rate": [float(q) for _, q, _ in history],
        "steps": [int(s) for _, _, s in history],
    })


def account_round(context: Context, plan: SampleDPPlan, *, method: str, delta: float) -> float:
    """Add one round of DP-SGD to the node's accountant; return the node's ε(δ) so far."""
    accountant = load_accountant(context, method)
    for _ in range(plan.steps):  # Opacus' own bookkeeping: one call per noisy step
        accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    save_accountant(context, accountant)
    return epsilon(accountant.history, delta, method)


def client_mods(mode: str) -> list:
    """ClientApp mods that client-side clipping needs (Flower's clipping mods).

    ``mode`` is ``privacy.client.mode``: ``client_fixed`` clips each update to the norm
    the server sends (McMahan et al. 2018), ``client_adaptive`` also reports whether it
    clipped, for the server's adaptive norm (Andrew et al. 2021). The server side
    (``strategies.client_dp``) sends the norm and reads the bit under the keys these mods
    use (``flwr.supercore.differential_privacy.KEY_CLIPPING_NORM`` / ``KEY_NORM_BIT``).
    Apply them to training messages only: evaluation and queries carry no update.
    """
    from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

    return {"client_fixed": [fixedclipping_mod],
            "client_adaptive": [adaptiveclipping_mod]}.get(mode, [])
