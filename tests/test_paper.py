"""The report pipeline (sandbox.paper): two --quick builds give identical numbers, the
HTML report loads in headless Chromium, an unchanged section is reused, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRATCH_COLUMNS = ("duration_s", "run_dir", "wall_s")


def _tff_ready() -> bool:
    from sandbox.engine.twin.runner import TwinError, tff_python

    try:
        tff_python()
    except TwinError:
        return False
    return True


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two complete --quick builds from scratch into separate directories."""
    from sandbox.paper.build import build

    first = build(tmp_path_factory.mktemp("paper") / "one", quick=True)
    second = build(tmp_path_factory.mktemp("paper") / "two", quick=True)
    return first, second


def test_quick_builds_give_identical_numbers(builds):
    """Every section's numbers (not its timings) are reproduced bit for bit."""
    first, second = builds
    allowed = {"twin": "skipped"} if not _tff_ready() else {}
    for section in first.sections:
        assert section.status == allowed.get(section.name, "done"), (
            f"{section.name}: {section.status}: {section.reason}")
    assert not first.reused and not second.reused
    for name in (s.name for s in first.sections if s.status == "done"):
        one, two = (b.out / "sections" / name for b in builds)
        assert (json.loads((one / "numbers.json").read_text())
                == json.loads((two / "numbers.json").read_text())), name
        for table in sorted(one.rglob("*.csv")):
            if {"runs", "trials", "frameworks"} & set(table.relative_to(one).parts[:-1]):
                continue  # run directories (named by time), frameworks.csv (mostly measured
                # times and memory): their reproducible numbers are in numbers.json
            assert _csv_numbers(table) == _csv_numbers(two / table.relative_to(one)), table


def _csv_numbers(path: Path) -> list[dict]:
    with path.open() as handle:
        return [{k: v for k, v in row.items() if k not in SCRATCH_COLUMNS}
                for row in csv.DictReader(handle)]


def test_report_loads_in_chromium(builds):
    """report.html in headless Chromium: every figure loads, no console errors."""
    from sandbox.paper.browser import check_report

    first = builds[0]
    figures = sum(len(s.figures) for s in first.sections if s.status == "done")
    result = check_report(first.out / "report.html")
    print(f"screenshot: {result.screenshot}")
    assert result.problems == []
    assert result.images == figures > 0
    assert result.screenshot.stat().st_size > 10_000
    html = (first.out / "report.html").read_text()
    assert "src=\"sections/" not in html and html.count("data:image/png;base64,") == figures
    markdown = (first.out / "report.md").read_text()
    assert markdown.count("Config hash:") >= figures and "torch 2.13.0" in markdown


def _copy_quick_configs(tmp_path: Path) -> Path:
    """configs/paper/quick/ in ``tmp_path`` (the study's experiment path made absolute)."""
    manifest = tmp_path / "quick"
    shutil.copytree(ROOT / "configs" / "paper" / "quick", manifest)
    study = manifest / "search.toml"
    study.write_text(study.read_text().replace(
        '"../../quickstart.toml"', json.dumps(str(ROOT / "configs" / "quickstart.toml"))))
    return manifest


def test_unchanged_sections_are_reused(builds, tmp_path):
    """A rebuild reuses every finished section; a changed config recomputes its own."""
    from sandbox.paper.build import build

    first = builds[0]
    copy = tmp_path / "copy"
    shutil.copytree(first.out, copy)
    again = build(copy, quick=True)
    done = [s.name for s in first.sections if s.status == "done"]
    assert again.reused == done
    manifest = _copy_quick_configs(tmp_path)
    text = (manifest / "robustness.toml").read_text().replace("rounds = 4", "rounds = 3")
    (manifest / "robustness.toml").write_text(text)
    changed = build(copy, quick=True, manifest=manifest / "paper.toml")
    assert "robustness" not in changed.reused
    assert set(changed.reused) == set(done) - {"robustness"}


@pytest.mark.parametrize("edit, message", [
    (("[robustness]", "[robustness]\nrepeats = 3"), "robustness.repeats: unknown key"),
    (('config = "twin.toml"', 'config = "missing.toml"'), "twin.config = 'missing.toml'"),
    (("repeats = 2", "repeats = 1"), "backend_cost.repeats"),
])
def test_bad_manifest_exits_2_and_writes_nothing(tmp_path, edit, message):
    manifest = _copy_quick_configs(tmp_path)
    text = (manifest / "paper.toml").read_text()
    assert edit[0] in text
    (manifest / "paper.toml").write_text(text.replace(edit[0], edit[1], 1))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "sandbox.paper", "--manifest",
                           str(manifest / "paper.toml"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not out.exists()


def test_out_that_is_a_file_exits_2(tmp_path):
    target = tmp_path / "report"
    target.write_text("")
    proc = subprocess.run([sys.executable, "-m", "sandbox.paper", "--quick", "--out",
                           str(target)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "--out" in proc.stderr


def test_reevaluation_seeds_and_bad_input():
    """Fresh seeds by default (after the experiment's); bad top_k/seeds name themselves."""
    from sandbox.core.errors import ConfigError
    from search.reevaluate import _seeds, reevaluate

    assert _seeds(3, 42) == [43, 44, 45]
    assert _seeds([7, 1], 42) == [7, 1]
    for bad in (0, [5, 5], [-1], True, "3"):
        with pytest.raises(ConfigError, match="seeds"):
            _seeds(bad, 42)
    study = ROOT / "configs" / "paper" / "quick" / "search.toml"
    with pytest.raises(ConfigError, match="top_k = 0"):
        reevaluate(study, top_k=0)
