"""Export parity: every format from either framework reloads to the trained model's outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import sandbox
from sandbox.engine import export as export_module
from sandbox.engine.export import ExportMismatch, export_run
from tests.conftest import ROOT, small_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run per framework (CNN, so conv layouts are exercised too)."""
    runs = {}
    for framework in ("torch", "keras"):
        out = tmp_path_factory.mktemp(framework)
        cfg = sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
            out, framework=framework, rounds=1, **{"model.arch": "cnn",
                                                   "model.channels": [4]}))
        runs[framework] = sandbox.run(cfg).run_dir
    return runs


@pytest.mark.parametrize("fmt", ["onnx", "savedmodel", "tflite"])
@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_export_reloads_to_the_trained_predictions(trained, framework, fmt):
    report = export_run(trained[framework], fmt)
    target = trained[framework] / "export" / fmt
    recorded = json.loads((target / "export.json").read_text())
    assert recorded["max_abs_logit_diff"] == report.max_abs_logit_diff <= report.tolerance
    assert report.agreement == 1.0 and report.test_examples > 100
    assert recorded["config_hash"] == sandbox.load_config(
        trained[framework] / "config.toml").config_hash()
    assert {"torch", "onnx", "keras"} <= set(recorded["versions"])
    if fmt == "onnx":  # the metadata travels inside the model file
        props = {p.key: p.value for p in onnx.load(str(target / "model.onnx")).metadata_props}
        assert props["fedsandbox.config_hash"] == report.config_hash
        assert props["fedsandbox.framework"] == framework
    else:
        inside = (target / "saved_model" / "fedsandbox_export.json" if fmt == "savedmodel"
                  else target / "model.tflite.json")
        assert json.loads(inside.read_text())["config_hash"] == report.config_hash


def test_a_mismatching_export_is_refused_and_writes_nothing(trained, monkeypatch, tmp_path):
    reload = export_module.reload_logits
    monkeypatch.setattr(export_module, "reload_logits",
                        lambda fmt, path, x: reload(fmt, path, x) + np.float32(1e-2))
    with pytest.raises(ExportMismatch, match="exceeds the tolerance"):
        export_run(trained["torch"], "tflite", out=tmp_path / "exported")
    assert not (tmp_path / "exported").exists()
