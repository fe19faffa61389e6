"""Privacy maths: accountants, the privacy ledger, DP plans and empirical audits.

Pure numpy/scipy apart from the accountant calls into Opacus (imported lazily), so
``import sandbox.core.privacy`` stays framework-free.
"""

from sandbox.core.privacy.accounting import ACCOUNTANTS, RDP_ORDERS, epsilon, noise_for_target
from sandbox.core.privacy.ledger import FEDERATION, Mechanism, PrivacyLedger
from sandbox.core.privacy.plan import (
    ClientDPPlan,
    SampleDPPlan,
    client_dp_plan,
    client_dp_rate,
    sample_dp_plan,
    sample_dp_plans,
)

__all__ = [
    "ACCOUNTANTS",
    "ClientDPPlan",
    "FEDERATION",
    "RDP_ORDERS",
    "Mechanism",
    "PrivacyLedger",
    "SampleDPPlan",
    "client_dp_plan",
    "client_dp_rate",
    "epsilon",
    "noise_for_target",
    "sample_dp_plan",
    "sample_dp_plans",
]
