"""What produced a number: code version, package versions, CPU; and section stamps.

A finished section directory holds ``stamp.json``: its config hashes and the code
version. A rebuild skips a section whose stamp matches (resumable builds); any change to
the section's configs or to the source of the packages recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from pathlib import Path

from sandbox.core.results import package_versions

ROOT = Path(__file__).resolve().parents[2]
SOURCE_PACKAGES = ("sandbox", "clients", "strategies", "search")
#: the packages a caption names (all of them are in every run.json)
CAPTION_PACKAGES = ("fedsandbox", "torch", "tensorflow-cpu", "keras", "flwr", "opacus",
                    "optuna", "numpy")


@cache
def code_version() -> str:
    """Hash of every Python source file of the project's packages (uncommitted edits too)."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


@cache
def versions_text() -> str:
    versions = package_versions()
    return ", ".join([f"python {versions['python']}"]
                     + [f"{name} {versions.get(name, '?')}" for name in CAPTION_PACKAGES])


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_text() -> str:
    """CPU and thread settings of timing figures."""
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
               if k in os.environ}
    return (f"CPU: {cpu_model()}, {os.cpu_count()} logical cores, shared with whatever else "
            "ran; thread settings as stated in this section's table caption"
            + (f"; {', '.join(f'{k}={v}' for k, v in threads.items())}" if threads else ""))


def stamp(hashes: dict[str, str], quick: bool) -> dict:
    return {"configs": hashes, "code": code_version(), "quick": quick}


def stamp_matches(directory: Path, wanted: dict) -> bool:
    path = directory / "stamp.json"
    try:
        return json.loads(path.read_text()) == wanted
    except (OSError, ValueError):
        return False
