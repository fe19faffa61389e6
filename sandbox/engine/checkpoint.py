"""Round checkpoints: what a killed run needs to continue exactly where it stopped.

After every round's centralized evaluation the run writes ``checkpoint.pkl`` into its
directory: the round, the whole outermost strategy (global model, the Flower strategy's
own state such as FedAdam moments or server momentum, client-level DP norm, the privacy
ledger, participation and failure records), the metric rows so far and every node's
``Context.state`` (round counters, each client's Opacus accountant). Everything random in
a run is drawn from generators seeded by (seed, round, ...), so the round number is the
whole random state. The file is written to ``checkpoint.pkl.tmp`` and renamed over the
old one (atomic on POSIX): a run killed while writing resumes from the previous round.
``checkpoint.json`` beside it says which round (for ``fedsandbox ls`` and tests).
``fedsandbox run --resume RUN_DIR`` continues from it (inline backend).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.core.errors import SandboxError

CHECKPOINT = "checkpoint.pkl"
CHECKPOINT_INFO = "checkpoint.json"
FORMAT = 1


@dataclass
class Checkpoint:
    config_hash: str
    server_round: int
    strategy: Any  # the run's Accounted strategy (strategies.accounted), whole
    rows: dict[int, dict[str, Any]]
    round_seconds: dict[int, float]
    node_states: dict[int, Any]  # node id -> Context.state (RecordDict)
    format: int = FORMAT


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically (temporary file, fsync, rename)."""
    tmp = directory / f"{CHECKPOINT}.tmp"
    with tmp.open("wb") as handle:
        pickle.dump(checkpoint, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / CHECKPOINT)
    info = {"round": checkpoint.server_round, "config_hash": checkpoint.config_hash}
    (directory / f"{CHECKPOINT_INFO}.tmp").write_text(json.dumps(info) + "\n")
    os.replace(directory / f"{CHECKPOINT_INFO}.tmp", directory / CHECKPOINT_INFO)


def load_checkpoint(directory: Path, config_hash: str) -> Checkpoint:
    """The checkpoint in ``directory``, checked against the run's config hash."""
    path = directory / CHECKPOINT
    if not path.is_file():
        raise SandboxError(f"--resume: {directory} has no {CHECKPOINT} (the run stopped "
                           "before its first round finished, or ran with "
                           "output.checkpoint = false); start it again")
    try:
        with path.open("rb") as handle:
            checkpoint = pickle.load(handle)  # noqa: S301 - our own file, in our run dir
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise SandboxError(f"--resume: cannot read {path} ({type(exc).__name__}: {exc})"
                           ) from None
    if not isinstance(checkpoint, Checkpoint) or checkpoint.format != FORMAT:
        raise SandboxError(f"--resume: {path} is not a checkpoint of this version")
    if checkpoint.config_hash != config_hash:
        raise SandboxError(f"--resume: {directory}/config.toml does not match its "
                           "checkpoint (config hash differs); was the file edited?")
    return checkpoint


def checkpoint_spend(directory: Path) -> tuple[list[dict[str, Any]], Any] | None:
    """What a run killed mid-way had released by its last checkpoint, or ``None``.

    A killed run leaves no ``metrics.json`` or ``ledger.json``, only ``checkpoint.pkl``:
    its metric rows (who trained and evaluated, per round) and its privacy ledger
    (``PrivacyLedger``). Nothing of a round is printed or written before that round's
    checkpoint, so these cover everything the run released.
    """
    path = directory / CHECKPOINT
    if not path.is_file():
        return None
    try:
        with path.open("rb") as handle:
            checkpoint = pickle.load(handle)  # noqa: S301 - our own file, in our run dir
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    if not isinstance(checkpoint, Checkpoint):
        return None
    rows = [checkpoint.rows[r] for r in sorted(checkpoint.rows)]
    return rows, getattr(checkpoint.strategy, "ledger", None)


def checkpoint_round(directory: Path) -> int | None:
    """The last checkpointed round of a run directory, if any."""
    try:
        return int(json.loads((directory / CHECKPOINT_INFO).read_text())["round"])
    except (OSError, ValueError, KeyError):
        return None
