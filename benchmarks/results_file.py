"""``benchmarks/RESULTS.md``: each benchmark owns one ``## `` section and replaces it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def replace_section(marker: str, section: str) -> None:
    """Put ``section`` (starting with ``marker``) in place of the old one, or append it."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if marker in text:
        head, _, rest = text.partition(marker)
        tail = rest[rest.find("\n## ") + 1:] if "\n## " in rest else ""
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)
    print(f"written to {RESULTS}")


def machine() -> str:
    """CPU model and core count, for the captions of timing figures."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"
