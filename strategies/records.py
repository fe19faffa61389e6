"""ArrayRecords <-> lists of numpy arrays for our own strategies' aggregation maths.

The arrays keep the record's key order, so a strategy can hand the maths of
:mod:`strategies.aggregation` plain lists and rebuild a record with the same keys. The
bytes are read and written with :mod:`sandbox.core.wire` (the same ``.npy`` layout as
Flower's ``Array``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message

from sandbox.core import wire


def record_arrays(record: ArrayRecord) -> tuple[list[str], list[np.ndarray]]:
    """The record's keys and its arrays in that order."""
    keys = list(record.keys())
    return keys, [wire.from_array(record[key]) for key in keys]


def arrays_record(keys: list[str], arrays: list[np.ndarray]) -> ArrayRecord:
    """An ArrayRecord with ``arrays`` under ``keys`` (inverse of :func:`record_arrays`)."""
    return ArrayRecord({key: wire.to_array(array)
                        for key, array in zip(keys, arrays, strict=True)})


def valid_replies(replies: Iterable[Message], *records: str) -> list[Message]:
    """Replies without an error, each checked to hold the ArrayRecords ``records``.

    A reply that lacks one is a protocol error of the ClientApp (not a client failure):
    raises RuntimeError naming the missing key.
    """
    valid = [reply for reply in replies if not reply.has_error()]
    for reply in valid:
        missing = [key for key in (*records, wire.METRICS) if key not in reply.content]
        if missing:
            raise RuntimeError(f"node {reply.metadata.src_node_id} replied without "
                               f"{missing}; the strategy needs {[*records, wire.METRICS]}")
    return valid
