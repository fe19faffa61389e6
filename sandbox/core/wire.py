"""The wire protocol between the server side and the ClientApp: keys, model, arrays.

Both sides of a federation use this module and nothing else to agree on what a message
holds: the record and metric keys below, the experiment's :class:`ModelSpec`
(:func:`model_spec_for`) and the model's encoding in an ``ArrayRecord``.

Messages
--------
``train`` (server -> client): ``{"arrays": ArrayRecord, "config": ConfigRecord}`` with
:data:`SERVER_ROUND` and, from FedProx, :data:`PROXIMAL_MU`. Reply: ``{"arrays",
"metrics"}`` with :data:`NUM_EXAMPLES` (FedAvg's weighting key), :data:`UNIT_WEIGHT`
(equal weights under client-level DP), :data:`PARTITION_ID` (for the server's privacy
ledger), :data:`TRAIN_LOSS` and, under DP-SGD, :data:`DP_EPSILON` /
:data:`DP_NOISE_MULTIPLIER` from the node's own accountant.
``evaluate``: reply ``{"metrics"}`` with :data:`NUM_EXAMPLES`, :data:`EVAL_LOSS`,
:data:`EVAL_ACCURACY` on the client's local test split and its :data:`PARTITION_ID`.
``query.partition`` (once per run, before round 1): reply ``{"metrics"}`` with the
node's :data:`PARTITION_ID`, so the server maps node ids to partition ids on every
runtime.

Model encoding
--------------
The model travels as **one** flat float32 ``Array`` (the canonical weights concatenated
in order) under :data:`FLAT_KEY`: stock strategies aggregate element-wise, so averaging
the flat vector is the same arithmetic as averaging each layer, and a reply costs one
``.npy`` header to parse instead of one per layer. Flower builds ``.npy`` bytes with
``np.save`` and reads them with ``np.load`` (which parses the header with ``ast``); the
header depends only on dtype and shape, so we cache it and write/read the bytes directly.
The bytes are identical to ``np.save``'s (a test checks), so Flower's ``Array.numpy()``
and stock strategies read them unchanged.

Flower is imported when a function first needs it, never at module import.
"""

from __future__ import annotations

import functools
import io
import math
from typing import TYPE_CHECKING

import numpy as np

from sandbox.core.data import load_federated_data
from sandbox.core.models import ModelSpec

if TYPE_CHECKING:
    from flwr.app import Array, ArrayRecord

    from sandbox.core.config import Config

# -- RecordDict keys (Flower's strategy defaults: arrayrecord_key, configrecord_key) -------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
# -- record keys -------------------------------------------------------------------------
FLAT_KEY = "weights"
NUM_EXAMPLES = "num-examples"
UNIT_WEIGHT = "unit-weight"
PARTITION_ID = "partition-id"
TRAIN_LOSS = "train_loss"
EVAL_LOSS = "eval_loss"
EVAL_ACCURACY = "eval_accuracy"
DP_EPSILON = "dp_epsilon"
DP_NOISE_MULTIPLIER = "dp_noise_multiplier"
#: optimizer steps the client took this round (FedNova's tau_i; client compute)
LOCAL_STEPS = "local-steps"
#: FedNova's ||a_i||_1: tau_i for plain SGD, sum_{k=1..tau_i} (1 - rho^k) / (1 - rho) with
#: SGD momentum rho (computed by the client, which knows its optimizer)
NORMALIZED_STEPS = "normalized-steps"
#: examples the client processed this round (steps x batch; client compute)
LOCAL_EXAMPLES = "local-examples"
#: 1.0 if the client trained in Keras, 0.0 if in torch (mixed federations)
KERAS_CLIENT = "keras-client"
#: 1.0 if the client is malicious (``[attack]``), else 0.0
MALICIOUS = "malicious"
#: training loss of the received global model on the client's data before training
#: (q-FFL's F_k(w^t))
PRE_TRAIN_LOSS = "pre_train_loss"
# -- extra ArrayRecords (RecordDict keys) --------------------------------------------------
#: SCAFFOLD: the server control variate c (server -> client, train messages)
SERVER_CONTROL = "server-control"
#: SCAFFOLD: the client's control variate change delta c_i (client -> server, replies)
CONTROL_DELTA = "control-delta"
# -- config keys (ConfigRecord of train/evaluate messages) --------------------------------
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"
FRAMEWORK = "framework"
#: q-FFL: the client reports :data:`PRE_TRAIN_LOSS` when this is true
REPORT_PRE_TRAIN_LOSS = "report-pre-train-loss"
# -- query messages ------------------------------------------------------------------------
#: ``query.partition``: the node answers ``{"metrics": {PARTITION_ID: its partition id}}``.
PARTITION_QUERY_ACTION = "partition"
# -- node config keys (Context.node_config) -----------------------------------------------
NODE_PARTITION_ID = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"


def model_spec_for(cfg: Config) -> ModelSpec:
    """The :class:`ModelSpec` of experiment ``cfg`` (input shape and classes from its data)."""
    data = load_federated_data(cfg.data, cfg.seed)
    return ModelSpec.from_config(cfg.model, data.input_shape, data.num_classes)


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def to_array(ndarray: np.ndarray) -> Array:
    from flwr.app import Array

    contiguous = np.ascontiguousarray(ndarray)
    header = _npy_header(contiguous.dtype, contiguous.shape)
    return Array(dtype=str(contiguous.dtype), shape=tuple(contiguous.shape),
                 stype="numpy.ndarray", data=header + contiguous.tobytes())


def from_array(array: Array) -> np.ndarray:
    dtype, shape = np.dtype(array.dtype), tuple(array.shape)
    header = _npy_header(dtype, shape)
    if array.stype == "numpy.ndarray" and array.data.startswith(header):
        return np.frombuffer(array.data, dtype=dtype, offset=len(header)).reshape(shape).copy()
    return array.numpy()


def to_record(weights: list[np.ndarray]) -> ArrayRecord:
    """Canonical weights -> ArrayRecord with one flat float32 Array."""
    from flwr.app import ArrayRecord

    flat = np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in weights])
    return ArrayRecord({FLAT_KEY: to_array(flat)})


def from_record(record: ArrayRecord, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """ArrayRecord from :func:`to_record` -> weights with the given canonical shapes."""
    if FLAT_KEY not in record:
        raise ValueError(f"expected one array '{FLAT_KEY}', got keys {list(record.keys())}")
    flat = from_array(record[FLAT_KEY])
    bounds = _bounds(tuple(tuple(shape) for shape in shapes))
    if flat.size != bounds[-1]:
        raise ValueError(f"flat weights have {flat.size} values, the model needs {bounds[-1]}")
    return [flat[start:end].reshape(shape)
            for start, end, shape in zip(bounds, bounds[1:], shapes, strict=False)]


@functools.lru_cache(maxsize=64)
def _bounds(shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """Offsets of each array in the flat vector, and its length: (0, n1, n1 + n2, ...)."""
    bounds = [0]
    for shape in shapes:
        bounds.append(bounds[-1] + math.prod(shape))
    return tuple(bounds)


def record_to_arrays(spec: ModelSpec, record: ArrayRecord) -> list[np.ndarray]:
    """The model in ``record`` as canonical arrays shaped by ``spec``."""
    return from_record(record, [shape for _, shape in spec.weight_shapes()])
