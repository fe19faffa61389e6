"""Build the report: run (or reuse) every section, then write report.md and report.html.

Layout of the output directory (default ``paper/``)::

    report.md, report.html   the report (the HTML embeds every figure: self-contained)
    build.json               wall time of the build and of each section, what was reused
    sections/<name>/         section.json, numbers.json, timings.json, stamp.json, PNGs,
                             runs/ (every run's results directory)

Every section's configs are validated and pre-flight checked before anything is written.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from sandbox.paper import experiments, studies, systems
from sandbox.paper.manifest import load_manifest
from sandbox.paper.model import Build, Section
from sandbox.paper.provenance import ROOT, stamp, stamp_matches
from sandbox.paper.render import write_html, write_markdown

MANIFEST = ROOT / "configs" / "paper" / "paper.toml"
QUICK_MANIFEST = ROOT / "configs" / "paper" / "quick" / "paper.toml"

#: name -> (title, config hashes, build); in report order
SECTIONS: dict[str, tuple[str, Callable, Callable]] = {
    "frameworks": ("Framework comparison", systems.frameworks_hashes, systems.frameworks),
    "strategies": ("Strategies on non-IID data", experiments.strategies_hashes,
                   experiments.strategies),
    "robustness": ("Robustness under attack", experiments.robustness_hashes,
                   experiments.robustness),
    "privacy": ("Utility vs ε, and privacy audits", experiments.privacy_hashes,
                experiments.privacy),
    "search": ("Search: Pareto front and re-evaluation", studies.search_hashes,
               studies.search),
    "twin": ("TensorFlow Federated twin check", systems.twin_hashes, systems.twin),
    "backend_cost": ("Backend cost per round", systems.backend_cost_hashes,
                     systems.backend_cost),
}


def build(out: str | Path = "paper", *, quick: bool = False, manifest: Path | None = None,
          force: bool = False, log: Callable[[str], None] = print) -> Build:
    """Build the report into ``out``; sections whose stamp matches are reused."""
    started = time.perf_counter()
    path = Path(manifest) if manifest else (QUICK_MANIFEST if quick else MANIFEST)
    specs = load_manifest(path)
    base = path.parent
    hashes = {name: hashes_of(getattr(specs, name), base)
              for name, (_, hashes_of, _) in SECTIONS.items()}
    out = Path(out)
    (out / "sections").mkdir(parents=True, exist_ok=True)
    sections, reused, walls = [], [], {}
    for name, (title, _, make) in SECTIONS.items():
        directory = out / "sections" / name
        wanted = stamp(hashes[name], quick)
        if not force and stamp_matches(directory, wanted):
            sections.append(Section.load(directory))
            reused.append(name)
            log(f"[paper] {name}: unchanged, reused")
            continue
        log(f"[paper] {name}: building")
        began = time.perf_counter()
        section = _make(name, title, make, getattr(specs, name), base, directory)
        section.config_hashes = hashes[name]
        walls[name] = time.perf_counter() - began
        section.timings["section_wall_s"] = walls[name]
        _commit(section, directory, wanted)
        sections.append(section)
        log(f"[paper] {name}: {section.status} in {walls[name]:.0f} s"
            + (f": {section.reason}" if section.reason else ""))
    wall_s = time.perf_counter() - started
    result = Build(out, sections, reused, wall_s)
    (out / "build.json").write_text(json.dumps(
        {"quick": quick, "manifest": str(path), "wall_s": wall_s, "section_wall_s": walls,
         "reused": reused, "status": {s.name: s.status for s in sections}},
        indent=2) + "\n")
    write_markdown(result, specs.title, quick)
    write_html(result, specs.title, quick)
    return result


def _make(name: str, title: str, make: Callable, spec, base: Path, directory: Path
          ) -> Section:
    """Run one section in ``<name>.partial``; a failure becomes a failed section."""
    partial = directory.with_name(f"{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        section = make(spec, base, partial)
    except Exception as exc:  # noqa: BLE001 - reported in the report and the exit code
        (partial / "error.txt").write_text(traceback.format_exc())
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        section = Section(name, title, status="failed",
                          reason=f"{type(exc).__name__}: {reason} (traceback: "
                                 f"sections/{name}/error.txt)")
    return section


def _commit(section: Section, directory: Path, wanted: dict) -> None:
    """Move ``<name>.partial`` into place; only a finished section gets a stamp."""
    partial = directory.with_name(f"{section.name}.partial")
    section.save(partial)
    if section.status == "done":
        (partial / "stamp.json").write_text(json.dumps(wanted, indent=2) + "\n")
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)
