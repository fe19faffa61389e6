"""The TensorFlow Federated twin of an exported experiment (runs in TFF's own venv).

Usage: ``python tff_side.py EXPORT_DIR OUT_DIR`` with the python of ``.nox/tff-env``
(``nox -s tff`` builds it). This script is standalone on purpose: it imports TensorFlow
2.14 (tf.keras 2), TensorFlow Federated 0.87, TF Privacy's accounting (dp-accounting)
and numpy, never the ``sandbox`` package, whose dependencies that environment lacks.
It reads what :mod:`sandbox.engine.twin.export` wrote and writes into ``OUT_DIR``:

    metrics.json            one row per round, round 0 = the initial model; columns
                            round, central_val_accuracy/loss, central_test_accuracy/loss,
                            train_loss (TFF's client loss metric), eps_federation (DP)
    weights_per_round.npz   round{r}.{canonical name}: the server model after round r
    run.json                versions, the TFF builders and aggregator used, accountant

Algorithms, through TFF's public builders only:

* FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS): ``tff.learning.algorithms.build_weighted_fed_avg``,
  client SGD with the exported lr, server SGD with lr 1.0, example-count weighting;
* FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", MLSys):
  ``build_weighted_fed_prox`` with ``proximal_strength`` = mu;
* DP-FedAvg with fixed clipping (McMahan et al. 2018, "Learning Differentially Private
  Recurrent Language Models", ICLR): the unweighted builders with
  ``tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed`` (clip C, noise
  multiplier z, denominator = expected clients per round), ε from dp-accounting's RDP
  accountant (the one TF Privacy uses) for the sampling the export performed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dp_accounting  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_federated as tff  # noqa: E402

EXPECTED_FORMAT = 1
EVAL_CHUNK = 4096  # rows per forward pass, as the sandbox's evaluator


def load_export(export_dir: Path) -> tuple[dict, dict, dict, dict]:
    """``experiment.json`` and the three npz files, after checking their digests."""
    experiment = json.loads((export_dir / "experiment.json").read_text())
    if experiment["format_version"] != EXPECTED_FORMAT:
        raise SystemExit(f"export format {experiment['format_version']} is not "
                         f"{EXPECTED_FORMAT}: this script and the exporter disagree")
    for name, digest in experiment["files"].items():
        if hashlib.sha256((export_dir / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{export_dir / name} does not match its digest in "
                             "experiment.json (changed after export?)")
    loaded = []
    for name in ("data.npz", "init_weights.npz", "batches.npz"):
        with np.load(export_dir / name, allow_pickle=False) as archive:
            loaded.append({key: archive[key] for key in archive.files})
    return experiment, *loaded


def build_keras_model(model: dict) -> tf.keras.Model:
    """The exported layer list as a tf.keras 2 ``Sequential`` (same layers as Keras 3's)."""
    kinds = {"conv1d": tf.keras.layers.Conv1D, "conv2d": tf.keras.layers.Conv2D,
             "maxpool1d": tf.keras.layers.MaxPooling1D,
             "maxpool2d": tf.keras.layers.MaxPooling2D}
    layers = [tf.keras.Input(shape=tuple(model["input_shape"]))]
    for layer in model["layers"]:
        kind = layer["type"]
        if kind.startswith("conv"):
            layers.append(kinds[kind](layer["filters"], layer["kernel_size"],
                                      padding=layer["padding"],
                                      activation=layer["activation"]))
        elif kind.startswith("maxpool"):
            layers.append(kinds[kind](layer["pool_size"]))
        elif kind == "flatten":
            layers.append(tf.keras.layers.Flatten())
        elif kind == "dense":
            layers.append(tf.keras.layers.Dense(layer["units"], activation=layer["activation"]))
        else:
            raise SystemExit(f"unknown layer type '{kind}' in experiment.json")
    keras_model = tf.keras.Sequential(layers)
    shapes = [tuple(v.shape) for v in keras_model.trainable_variables]
    expected = [tuple(shape) for _, shape in model["weights"]]
    if shapes != expected:
        raise SystemExit(f"tf.keras model weights {shapes} differ from the canonical "
                         f"layout {expected}")
    return keras_model


def client_dataset(data: dict, batches: dict, server_round: int, pid: int) -> tf.data.Dataset:
    """The client's local training of one round: its batches in the exported order.

    Batches are padded to one width and cut back to their real size in ``map``, so the
    dataset is built from tensors only (TFF serializes it) and yields batches of
    different sizes where the schedule has them (the last batch of each epoch).
    """
    order = batches[f"r{server_round}_c{pid}_index"]
    sizes = batches[f"r{server_round}_c{pid}_sizes"]
    x, y = data[f"client{pid}_x"], data[f"client{pid}_y"]
    width = int(sizes.max())
    index = np.zeros((len(sizes), width), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for row, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        index[row, :size] = order[start:start + size]
    padded = tf.data.Dataset.from_tensor_slices((x[index], y[index], sizes))
    return padded.map(lambda xb, yb, n: (xb[:n], yb[:n]))


def build_process(experiment: dict, element_spec):
    """TFF's learning process for the exported algorithm (see the module docstring)."""
    model = experiment["model"]

    def model_fn():
        return tff.learning.models.from_keras_model(
            build_keras_model(model), input_spec=element_spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    client_optimizer = _client_optimizer(experiment["train"])
    server_optimizer = tff.learning.optimizers.build_sgdm(learning_rate=1.0)
    algorithm, dp = experiment["algorithm"], experiment["client_dp"]
    common = {"client_optimizer_fn": client_optimizer, "server_optimizer_fn": server_optimizer}
    if algorithm["name"] == "fedprox":
        common["proximal_strength"] = algorithm["proximal_mu"]
    if dp is None:
        build = (tff.learning.algorithms.build_weighted_fed_prox
                 if algorithm["name"] == "fedprox"
                 else tff.learning.algorithms.build_weighted_fed_avg)
        aggregator = tff.aggregators.MeanFactory()
        process = build(model_fn, client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
                        model_aggregator=aggregator, **common)
        return process, {"builder": build.__name__, "aggregator": "MeanFactory",
                         "client_weighting": "NUM_EXAMPLES"}
    # DP-FedAvg: every client's update counts once (unit weights), clipped to C, summed,
    # N(0, (zC)^2) added, divided by the expected number of clients (fixed denominator).
    aggregator = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=dp["noise_multiplier"], clients_per_round=dp["expected_clients"],
        clip=dp["clipping_norm"])
    build = (tff.learning.algorithms.build_unweighted_fed_prox
             if algorithm["name"] == "fedprox"
             else tff.learning.algorithms.build_unweighted_fed_avg)
    return build(model_fn, model_aggregator=aggregator, **common), {
        "builder": build.__name__, "aggregator": "DifferentiallyPrivateFactory.gaussian_fixed",
        "client_weighting": "UNIFORM"}


def _client_optimizer(train: dict):
    if train["optimizer"] == "adam":  # Keras' defaults (beta 0.9 / 0.999, epsilon 1e-7)
        return tff.learning.optimizers.build_adam(learning_rate=train["lr"])
    return tff.learning.optimizers.build_sgdm(learning_rate=train["lr"],
                                              momentum=train["momentum"] or None)


class Evaluator:
    """Centralized loss and accuracy, computed as the sandbox's evaluator computes them."""

    def __init__(self, model: dict) -> None:
        self.model = build_keras_model(model)
        self._logits = tf.function(lambda x: self.model(x, training=False))

    def evaluate(self, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray
                 ) -> tuple[float, float]:
        self.model.set_weights(weights)
        logits = np.concatenate([self._logits(x[s:s + EVAL_CHUNK]).numpy()
                                 for s in range(0, len(x), EVAL_CHUNK)])
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = max(len(y), 1)
        loss = float(-log_probs[np.arange(len(y)), y].sum()) / n
        return loss, float((logits.argmax(1) == y).sum()) / n


class Accountant:
    """ε of the client-level DP releases so far (add/remove one client), two accountants.

    RDP: ``dp_accounting.rdp.RdpAccountant`` (what TF Privacy's ``compute_dp_sgd_privacy``
    uses); PLD: ``dp_accounting.pld.PLDAccountant``. One round is a Gaussian mechanism of
    multiplier z, Poisson-subsampled with rate q when q < 1.
    """

    def __init__(self, dp: dict) -> None:
        gaussian = dp_accounting.GaussianDpEvent(dp["noise_multiplier"])
        rate = dp["sample_rate"]
        self.event = gaussian if rate >= 1 else dp_accounting.PoissonSampledDpEvent(
            rate, gaussian)
        self.delta = dp["delta"]
        self.rdp = dp_accounting.rdp.RdpAccountant()
        self.pld = dp_accounting.pld.PLDAccountant()

    def step(self) -> dict[str, float | None]:
        self.rdp.compose(self.event)
        epsilons = {"rdp": float(self.rdp.get_epsilon(self.delta)), "pld": None}
        if self.pld is not None:
            try:
                self.pld.compose(self.event)
                epsilons["pld"] = float(self.pld.get_epsilon(self.delta))
            except (MemoryError, OverflowError, ValueError) as exc:
                # A tiny noise multiplier makes the PLD's discretized support astronomically
                # large; RDP still answers (with a huge ε), so keep going without PLD.
                print(f"PLD accountant gave up ({type(exc).__name__}); RDP only", flush=True)
                self.pld = None
        return epsilons


def run(export_dir: Path, out_dir: Path) -> None:
    started = time.perf_counter()
    experiment, data, init, batches = load_export(export_dir)
    tf.random.set_seed(experiment["seed"])  # TF's global seed (TFF's DP noise draws)
    names = [name for name, _ in experiment["model"]["weights"]]
    first = next(iter(experiment["participation"].values()))[0]
    element_spec = client_dataset(data, batches, 1, first).element_spec
    process, builder = build_process(experiment, element_spec)
    state = process.initialize()
    state = process.set_model_weights(state, tff.learning.models.ModelWeights(
        trainable=[init[name] for name in names], non_trainable=[]))
    evaluator = Evaluator(experiment["model"])
    accountant = Accountant(experiment["client_dp"]) if experiment["client_dp"] else None
    rows, per_round, epsilons = [], {}, []
    for server_round in range(experiment["rounds"] + 1):
        train_loss = None
        if server_round:
            pids = experiment["participation"][str(server_round)]
            datasets = [client_dataset(data, batches, server_round, p) for p in pids]
            state, metrics = process.next(state, datasets)
            train_loss = float(metrics["client_work"]["train"]["loss"])
        weights = [np.asarray(w, np.float32)
                   for w in process.get_model_weights(state).trainable]
        per_round.update({f"round{server_round}.{n}": w for n, w in zip(names, weights,
                                                                          strict=True)})
        rows.append(_row(server_round, evaluator, weights, data, train_loss))
        if accountant is not None and server_round:
            epsilons.append(accountant.step())
            rows[-1]["eps_federation"] = epsilons[-1]["rdp"]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "weights_per_round.npz", **per_round)
    (out_dir / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out_dir / "run.json").write_text(json.dumps({
        **builder, "wall_s": time.perf_counter() - started, "versions": _versions(),
        "epsilon": None if accountant is None else {
            "accountants": {"rdp": "dp_accounting.rdp.RdpAccountant",
                            "pld": "dp_accounting.pld.PLDAccountant"},
            "event": repr(accountant.event), "delta": accountant.delta,
            "per_round": epsilons},
    }, indent=2) + "\n")


def _row(server_round: int, evaluator: Evaluator, weights: list[np.ndarray], data: dict,
         train_loss: float | None) -> dict:
    val_loss, val_accuracy = evaluator.evaluate(weights, data["val_x"], data["val_y"])
    test_loss, test_accuracy = evaluator.evaluate(weights, data["test_x"], data["test_y"])
    return {"round": server_round, "central_val_accuracy": val_accuracy,
            "central_val_loss": val_loss, "central_test_accuracy": test_accuracy,
            "central_test_loss": test_loss, "train_loss": train_loss}


def _versions() -> dict[str, str]:
    names = ["tensorflow-federated", "tensorflow", "tensorflow-privacy", "dp-accounting",
             "numpy", "jax"]
    return {"python": sys.version.split()[0],
            **{name: metadata.version(name) for name in names}}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: tff_side.py EXPORT_DIR OUT_DIR")
    run(Path(sys.argv[1]), Path(sys.argv[2]))
