"""numpy <-> Flower ``Array`` without ``np.save``/``np.load`` on the hot path.

Flower stores each array as ``.npy`` bytes (``stype="numpy.ndarray"``) and builds them
with ``np.save`` and reads them with ``np.load``, which parses the header with ``ast``:
tens of microseconds per array, paid for every array of every client in every round.
The ``.npy`` header only depends on dtype and shape, so we cache it and write/read the
bytes directly. The bytes are identical to ``np.save``'s (a test checks), so Flower's
own ``Array.numpy()`` and stock strategies read them unchanged; anything we receive that
does not start with the expected header goes through ``Array.numpy()``.

The model travels as **one** flat Array (the canonical weights concatenated in order)
under the key ``FLAT_KEY``: stock strategies aggregate element-wise, so averaging the flat
vector is the same arithmetic as averaging each layer, and a reply costs one header to
parse on the server instead of one per layer (the dominant per-client overhead for small
models). Run directories still store named per-layer arrays.
"""

from __future__ import annotations

import functools
import io

import numpy as np
from flwr.app import Array, ArrayRecord


@functools.lru_cache(maxsize=1024)
def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def to_array(ndarray: np.ndarray) -> Array:
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


FLAT_KEY = "weights"


def to_record(weights: list[np.ndarray]) -> ArrayRecord:
    """Canonical weights -> ArrayRecord with one flat float32 Array."""
    flat = np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in weights])
    return ArrayRecord({FLAT_KEY: to_array(flat)})


def from_record(record: ArrayRecord, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """ArrayRecord from :func:`to_record` -> weights with the given canonical shapes."""
    if FLAT_KEY not in record:
        raise ValueError(f"expected one array '{FLAT_KEY}', got keys {list(record.keys())}")
    flat = from_array(record[FLAT_KEY])
    sizes = [int(np.prod(shape)) for shape in shapes]
    if flat.size != sum(sizes):
        raise ValueError(f"flat weights have {flat.size} values, the model needs {sum(sizes)}")
    chunks = np.split(flat, np.cumsum(sizes)[:-1])
    return [chunk.reshape(shape) for chunk, shape in zip(chunks, shapes, strict=True)]
