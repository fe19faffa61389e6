"""Export one experiment as plain files for an independent re-implementation (a twin).

The twin side (``tff_side.py``, in TensorFlow Federated's own environment) reads only
these files, never the config or this package, so everything the federation's result
depends on is written out explicitly::

    experiment.json   format version, model layers and canonical weight names/shapes,
                      client optimizer, rounds, algorithm (FedAvg / FedProx mu),
                      client-level DP (clip, noise multiplier, expected clients, δ),
                      clients per round, examples per client, file digests
    data.npz          client{p}_x / client{p}_y (each client's training arrays),
                      val_x / val_y (server-held validation), test_x / test_y (global test)
    init_weights.npz  ModelSpec.init_weights(seed), canonical names
    batches.npz       r{round}_c{p}_index (the example order of that client's local
                      training, all epochs) and r{round}_c{p}_sizes (its batch sizes)

The ``.npz`` files are written with fixed zip timestamps, so the same config gives the
same bytes (``experiment.json`` lists their SHA-256).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clients import training_batches
from sandbox.core import wire
from sandbox.core.errors import ConfigError
from sandbox.core.experiment import load_experiment_data
from sandbox.core.sampling import clients_for_round, poisson_clients_for_round

if TYPE_CHECKING:
    from sandbox.core.config import Config
    from sandbox.core.models import ModelSpec

FORMAT_VERSION = 1
#: Strategies the twin re-implements (TFF's builders for them).
TWIN_STRATEGIES = ("fedavg", "fedprox")
#: Client-level DP modes the twin re-implements (TFF's Gaussian fixed-clipping factory).
TWIN_CLIENT_DP = ("off", "server_fixed")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def check_twinnable(cfg: Config) -> None:
    """Raise a ConfigError naming the key when ``cfg`` has no TFF twin."""
    problems = []
    if cfg.federation.strategy not in TWIN_STRATEGIES:
        problems.append(f"federation.strategy='{cfg.federation.strategy}' has no TFF twin; "
                        f"allowed: {', '.join(TWIN_STRATEGIES)}")
    if cfg.privacy.client.mode not in TWIN_CLIENT_DP:
        problems.append(f"privacy.client.mode='{cfg.privacy.client.mode}' has no TFF twin; "
                        f"allowed: {', '.join(TWIN_CLIENT_DP)}")
    if cfg.privacy.sample.enabled:
        problems.append("privacy.sample.enabled: DP-SGD inside clients has no TFF twin "
                        "(its batches and noise are drawn inside each trainer)")
    if cfg.model.dropout:
        problems.append("model.dropout must be 0 for a twin: each framework draws its own "
                        "dropout masks, so the weights could not agree")
    if cfg.privacy.client.mode != "off" and cfg.privacy.noise != "seeded":
        problems.append("privacy.noise must be 'seeded' for a client-level DP twin: the "
                        "export hands TFF the clients the server will sample, which secure "
                        "noise keeps secret (a twin is a cross-check, not a private release)")
    if cfg.privacy.audit.canaries:
        problems.append("privacy.audit.canaries must be 0 for a twin (canaries change the "
                        "clients' data after partitioning)")
    if problems:
        raise ConfigError("twin: " + "; ".join(problems), problems=problems)


def export_experiment(cfg: Config, out_dir: Path) -> dict:
    """Write the twin inputs of ``cfg`` into ``out_dir``; return ``experiment.json``'s dict."""
    check_twinnable(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = load_experiment_data(cfg)
    spec = wire.model_spec_for(cfg)
    arrays = {"val_x": data.x_val, "val_y": data.y_val,
              "test_x": data.x_test, "test_y": data.y_test}
    for pid, client in enumerate(data.clients):
        arrays[f"client{pid}_x"], arrays[f"client{pid}_y"] = client.x_train, client.y_train
    save_npz(out_dir / "data.npz", arrays)
    save_npz(out_dir / "init_weights.npz",
             dict(zip(spec.weight_names(), spec.init_weights(cfg.seed), strict=True)))
    sizes = [len(client.y_train) for client in data.clients]
    participation = {r: training_clients(cfg, r) for r in range(1, cfg.rounds + 1)}
    save_npz(out_dir / "batches.npz", _batches(cfg, participation, sizes))
    experiment = {
        "format_version": FORMAT_VERSION,
        "name": cfg.name, "seed": cfg.seed, "config_hash": cfg.config_hash(),
        "model": model_description(spec),
        "train": {"optimizer": cfg.train.optimizer, "lr": cfg.train.lr,
                  "momentum": cfg.train.momentum, "batch_size": cfg.train.batch_size,
                  "local_epochs": cfg.train.local_epochs, "local_steps": cfg.train.local_steps},
        "rounds": cfg.rounds,
        "algorithm": _algorithm(cfg),
        "client_dp": _client_dp(cfg),
        "num_clients": cfg.data.num_clients,
        "num_examples": sizes,
        "participation": {str(r): pids for r, pids in participation.items()},
        "files": {name: file_digest(out_dir / name)
                  for name in ("data.npz", "init_weights.npz", "batches.npz")},
    }
    (out_dir / "experiment.json").write_text(json.dumps(experiment, indent=2) + "\n")
    return experiment


def training_clients(cfg: Config, server_round: int) -> list[int]:
    """The partition ids that train in ``server_round``, chosen as the server chooses them.

    Poisson sampling with rate ``fraction_train`` under client-level DP, fixed-size
    sampling otherwise (``sandbox.core.sampling``; the server's choice is in the run's
    ``participation.json``, which the twin checks against).
    """
    ids = range(cfg.data.num_clients)
    fraction = cfg.federation.fraction_train
    if cfg.privacy.client.mode != "off":
        return poisson_clients_for_round(cfg.seed, server_round, "train", ids, fraction)
    return clients_for_round(cfg.seed, server_round, "train", ids, fraction)


def model_description(spec: ModelSpec) -> dict:
    """The layer list of ``spec`` as the Keras clients build it, with canonical weights.

    The twin builds exactly these layers in order, so it needs no copy of
    :class:`~sandbox.core.models.ModelSpec`'s rules (which conv layers pool, sizes).
    """
    layers: list[dict] = []
    for conv in spec.conv_layers():
        layers.append({"type": f"conv{conv.ndim}d", "filters": conv.out_channels,
                       "kernel_size": conv.kernel_size, "padding": "same",
                       "activation": spec.activation})
        if conv.pool:
            layers.append({"type": f"maxpool{conv.ndim}d", "pool_size": 2})
    layers.append({"type": "flatten"})
    layers += [{"type": "dense", "units": width, "activation": spec.activation}
               for width in spec.hidden]
    layers.append({"type": "dense", "units": spec.num_classes, "activation": None})
    return {"input_shape": list(spec.input_shape), "num_classes": spec.num_classes,
            "layers": layers, "loss": "sparse_categorical_crossentropy_from_logits",
            "weights": [[name, list(shape)] for name, shape in spec.weight_shapes()]}


def _algorithm(cfg: Config) -> dict:
    if cfg.federation.strategy == "fedprox":
        return {"name": "fedprox",
                "proximal_mu": float(cfg.federation.strategy_args.get("proximal_mu", 0.0))}
    return {"name": "fedavg"}


def _client_dp(cfg: Config) -> dict | None:
    dp = cfg.privacy.client
    if dp.mode == "off":
        return None
    rate = cfg.federation.fraction_train
    return {"mode": dp.mode, "clipping_norm": dp.clipping_norm,
            "noise_multiplier": dp.noise_multiplier, "sample_rate": rate,
            "expected_clients": rate * cfg.data.num_clients, "delta": cfg.privacy.delta,
            "sampling": "poisson"}


def _batches(cfg: Config, participation: dict[int, list[int]],
             sizes: list[int]) -> dict[str, np.ndarray]:
    arrays = {}
    for server_round, pids in participation.items():
        for pid in pids:
            batches = training_batches(cfg, server_round, pid, sizes[pid])
            arrays[f"r{server_round}_c{pid}_index"] = np.concatenate(batches).astype(np.int64)
            arrays[f"r{server_round}_c{pid}_sizes"] = np.array([len(b) for b in batches],
                                                               dtype=np.int64)
    return arrays


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps: equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME),
                             buffer.getvalue())


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
