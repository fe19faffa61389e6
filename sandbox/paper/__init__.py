"""The short report: ``python -m sandbox.paper [--quick] [--out paper]`` (``nox -s paper``).

Every table and figure is regenerated from ``configs/paper/`` (``configs/paper/quick/``
with ``--quick``): framework comparison, strategies on non-IID data, robustness under
attack, utility vs ε with privacy audits, a search's Pareto front with its best
configurations re-evaluated over fresh seeds, the TensorFlow Federated twin check, and
backend cost per round. Output: ``report.md``, PNGs and a self-contained ``report.html``
(docs/paper.md). The pipeline sits at the CLI level: it may import every layer below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.paper.build import build
    from sandbox.paper.model import Build


def __getattr__(name: str) -> Any:
    if name == "build":
        from sandbox.paper.build import build

        return build
    if name == "Build":
        from sandbox.paper.model import Build

        return Build
    raise AttributeError(f"module 'sandbox.paper' has no attribute '{name}'")


__all__ = ["Build", "build"]
