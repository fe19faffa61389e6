"""Long end-to-end runs (`nox -s tests_slow`): shipped configs and backend parity at scale."""

from __future__ import annotations

import pytest

import sandbox
from tests.conftest import ROOT
from tests.test_runtime import RUN_AND_REPORT, _subprocess_run, assert_same_history

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["digits_dirichlet", "mnist1d_shards", "synthetic_natural"])
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_shipped_config_learns(tmp_path, name, framework):
    cfg = sandbox.load_config(ROOT / "configs" / f"{name}.toml", {
        "framework": framework, "output.dir": str(tmp_path), "output.progress": False})
    result = sandbox.run(cfg)
    accuracy = result.metric("central_test_accuracy")
    assert max(accuracy) > accuracy[0] + 0.3, accuracy


def test_ray_matches_inline_with_20_clients(tmp_path):
    extra = {"rounds": 5, "data.num_clients": 20}
    ray = _subprocess_run(RUN_AND_REPORT.format(tmp=str(tmp_path), extra=extra | {
        "backend": "ray"}))
    from tests.conftest import small_overrides

    inline = sandbox.run(sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                                             small_overrides(tmp_path, **extra)))
    assert_same_history(inline.rounds, ray["rounds"], atol=0)
