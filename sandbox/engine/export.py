"""Export a run's final global model for deployment, and prove the export is faithful.

``fedsandbox export RUN_DIR --format onnx|savedmodel|tflite`` reads ``config.toml`` and
``weights.npz`` of a run directory (or of a study report's ``best_model/``), rebuilds the
trained model and writes it to ``RUN_DIR/export/<format>/``:

=============  ==========================================  =========================
format         written with                                reloaded with
=============  ==========================================  =========================
``onnx``       ``torch.onnx.export`` (torch runs) or       ``onnxruntime``
               ``tf2onnx`` (Keras runs)
``savedmodel`` ``keras.Model.export``                      ``tf.saved_model.load``
``tflite``     ``tf.lite.TFLiteConverter`` (LiteRT)        ``ai_edge_litert`` interpreter
=============  ==========================================  =========================

SavedModel and TFLite are TensorFlow formats: a torch run is exported through a Keras
model with the same canonical weights (the canonical layout is shared, so it is the same
function; the parity check below compares against the run's own framework). Every export
is reloaded with its runtime and compared with the trained model on the global test set:
``export.json`` records the largest absolute logit difference, the share of test examples
with the same predicted class, and the tolerance. An export outside the tolerance raises
:class:`ExportMismatch` and keeps nothing. Metadata (config hash, run, package versions)
travels with the file: in the ONNX model's ``metadata_props``, inside the SavedModel
directory (``fedsandbox_export.json``) and beside the ``.tflite`` file.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from sandbox.core import wire
from sandbox.core.errors import ConfigError, SandboxError
from sandbox.core.experiment import load_experiment_data
from sandbox.engine.preflight import load_config

if TYPE_CHECKING:
    from sandbox.core.config import Config

ExportFormat = Literal["onnx", "savedmodel", "tflite"]
FORMATS: tuple[str, ...] = ("onnx", "savedmodel", "tflite")
#: float32 inference in another runtime reorders sums: |Δlogit| ≤ ATOL + RTOL · max|logit|
ATOL, RTOL = 1e-4, 1e-5
MODEL_FILES = {"onnx": "model.onnx", "savedmodel": "saved_model", "tflite": "model.tflite"}
PACKAGES = ("torch", "tensorflow-cpu", "keras", "onnx", "onnxruntime", "tf2onnx",
            "ai-edge-litert", "flwr")


class ExportMismatch(SandboxError):
    """The reloaded export's predictions differ from the trained model's."""


@dataclass(frozen=True)
class ExportReport:
    """What ``export.json`` records about one export."""

    format: str
    path: str
    run: str
    framework: str
    built_with: str
    config_hash: str
    test_examples: int
    max_abs_logit_diff: float
    tolerance: float
    agreement: float
    versions: dict[str, str]


def export_run(run_dir: str | Path, fmt: str, *, out: str | Path | None = None) -> ExportReport:
    """Export the model of ``run_dir`` as ``fmt``; reload it and check its predictions.

    Raises
    ------
    ConfigError
        Unknown format, or no ``config.toml`` + ``weights.npz`` in ``run_dir`` (nor in
        its ``best_model/``), before anything is written.
    ExportMismatch
        The reloaded model disagrees with the trained one beyond the tolerance.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    source = _model_dir(Path(run_dir))
    cfg = load_config(source / "config.toml")
    spec = wire.model_spec_for(cfg)
    with np.load(source / "weights.npz") as stored:
        missing = [n for n in spec.weight_names() if n not in stored]
        if missing:
            raise ConfigError(f"{source / 'weights.npz'}: no arrays {missing} for the model "
                              "of its config.toml")
        weights = [stored[name] for name in spec.weight_names()]
    x_test = load_experiment_data(cfg).x_test.astype(np.float32)
    reference = _reference_logits(cfg, spec, weights, x_test)
    target = Path(out) if out is not None else source / "export" / fmt
    with tempfile.TemporaryDirectory(dir=target.parent if target.parent.exists() else None
                                     ) as scratch:
        staged = Path(scratch) / fmt
        staged.mkdir()
        built_with = _WRITERS[fmt](cfg, spec, weights, staged / MODEL_FILES[fmt])
        report = _check(cfg, fmt, source, built_with, staged, x_test, reference)
        _attach_metadata(fmt, staged, report)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(staged, target)
    return report


def _model_dir(run_dir: Path) -> Path:
    for candidate in (run_dir, run_dir / "best_model"):
        if (candidate / "config.toml").is_file() and (candidate / "weights.npz").is_file():
            return candidate
    raise ConfigError(
        f"{run_dir}: not a run directory with a saved model (needs config.toml and "
        "weights.npz, written with output.save_weights = true; or a study report's "
        "best_model/)")


def _reference_logits(cfg: Config, spec, weights, x: np.ndarray) -> np.ndarray:
    """The trained model's outputs in the framework the run trained in."""
    from clients import get_evaluator

    framework = "torch" if cfg.framework == "mixed" else cfg.framework
    evaluator = get_evaluator(framework, spec, cfg.train)
    evaluator.set_weights(weights)
    return np.asarray(evaluator.logits(x), dtype=np.float32)


def _write_onnx(cfg: Config, spec, weights, path: Path) -> str:
    if cfg.framework in ("torch", "mixed"):
        import torch

        from clients import framework_model

        module = framework_model("torch", spec, weights)
        example = torch.zeros((2, *spec.input_shape), dtype=torch.float32)
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=["x"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        program.save(str(path))
        return "torch.onnx (dynamo exporter)"
    import tf2onnx

    function = _keras_function(spec, weights)
    tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                  opset=17, output_path=str(path))
    return "tf2onnx from a tf.function of the Keras model"


def _keras_function(spec, weights):
    import tensorflow as tf

    from clients import framework_model

    model = framework_model("keras", spec, weights)
    signature = [tf.TensorSpec((None, *spec.input_shape), tf.float32, name="x")]
    return tf.function(lambda x: model(x, training=False), input_signature=signature)


def _write_savedmodel(cfg: Config, spec, weights, path: Path) -> str:
    from clients import framework_model

    model = framework_model("keras", spec, weights)  # referenced until the export has traced it
    model.export(str(path), format="tf_saved_model", verbose=False)
    return "keras.Model.export (tf_saved_model)"


def _write_tflite(cfg: Config, spec, weights, path: Path) -> str:
    import tensorflow as tf

    function = _keras_function(spec, weights)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function)
    path.write_bytes(converter.convert())
    return "tf.lite.TFLiteConverter from a tf.function of the Keras model"


_WRITERS = {"onnx": _write_onnx, "savedmodel": _write_savedmodel, "tflite": _write_tflite}


def reload_logits(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    """Outputs of the exported model at ``path`` for ``x``, run by the format's runtime."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # holds the variables serve() reads
        return loaded.serve(x).numpy()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _check(cfg: Config, fmt: str, source: Path, built_with: str, staged: Path,
           x: np.ndarray, reference: np.ndarray) -> ExportReport:
    logits = np.asarray(reload_logits(fmt, staged / MODEL_FILES[fmt], x), dtype=np.float32)
    if logits.shape != reference.shape or not np.isfinite(logits).all():
        raise ExportMismatch(f"{fmt} export gives outputs of shape {logits.shape} "
                             f"(finite: {np.isfinite(logits).all()}), expected {reference.shape}")
    diff = float(np.abs(logits - reference).max())
    tolerance = ATOL + RTOL * float(np.abs(reference).max())
    report = ExportReport(
        format=fmt, path=MODEL_FILES[fmt], run=source.name, framework=cfg.framework,
        built_with=built_with, config_hash=cfg.config_hash(), test_examples=len(x),
        max_abs_logit_diff=diff, tolerance=tolerance,
        agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
        versions=_versions())
    if diff > tolerance:
        raise ExportMismatch(f"{fmt} export of {source}: max |Δlogit| = {diff:.3g} on the "
                             f"test set exceeds the tolerance {tolerance:.3g}; nothing written")
    return report


def _versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def _attach_metadata(fmt: str, staged: Path, report: ExportReport) -> None:
    text = json.dumps(asdict(report), indent=2) + "\n"
    (staged / "export.json").write_text(text)
    if fmt == "onnx":
        import onnx

        path = staged / MODEL_FILES[fmt]
        model = onnx.load(str(path))
        flat = {"fedsandbox." + k: json.dumps(v) if isinstance(v, dict) else str(v)
                for k, v in asdict(report).items()}
        onnx.helper.set_model_props(model, flat)
        onnx.save(model, str(path))
    elif fmt == "savedmodel":
        (staged / MODEL_FILES[fmt] / "fedsandbox_export.json").write_text(text)
    else:
        (staged / (MODEL_FILES[fmt] + ".json")).write_text(text)
