"""Open report.html in headless Chromium and check it: every figure loads, nothing fails.

``python -m sandbox.paper.browser paper/report.html`` (``nox -s paper`` runs it after the
build). Uses Playwright's Python API with Debian's ``chromium`` binary
(``/usr/bin/chromium``; ``FEDSANDBOX_CHROMIUM`` overrides it); no browser download.
Fails on a console error, a failed request, a page error or an image whose
``naturalWidth`` is 0, and saves a full-page screenshot next to the report.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_VARIABLE = "FEDSANDBOX_CHROMIUM"


def chromium_path() -> str:
    """The Chromium binary: ``$FEDSANDBOX_CHROMIUM``, else ``chromium`` on the PATH."""
    path = os.environ.get(CHROMIUM_VARIABLE) or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        raise FileNotFoundError(f"no Chromium at {path}: install Debian's package "
                                "(`apt-get install -y chromium`; `nox -s paper` does) or set "
                                f"{CHROMIUM_VARIABLE}")
    return path


@dataclass
class PageCheck:
    images: int = 0
    broken: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def problems(self) -> list[str]:
        return ([f"broken image: {b}" for b in self.broken]
                + [f"console error: {e}" for e in self.console_errors]
                + [f"failed request: {r}" for r in self.failed_requests])


def check_report(report: Path, screenshot: Path | None = None) -> PageCheck:
    """Load ``report`` in headless Chromium; what loaded, what failed, the screenshot."""
    from playwright.sync_api import sync_playwright

    report = Path(report).resolve()
    result = PageCheck(screenshot=Path(screenshot or report.with_name("screenshot.png")))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(),
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: m.type == "error"
                    and result.console_errors.append(m.text))
            page.on("pageerror", lambda e: result.console_errors.append(str(e)))
            page.on("requestfailed", lambda r: result.failed_requests.append(
                f"{r.url[:80]} ({r.failure})"))
            page.goto(report.as_uri(), wait_until="load")
            states = page.evaluate("""() => Array.from(document.images).map(img => ({
                alt: img.alt, ok: img.complete && img.naturalWidth > 0}))""")
            result.images = len(states)
            result.broken = [s["alt"] for s in states if not s["ok"]]
            page.screenshot(path=str(result.screenshot), full_page=True)
        finally:
            browser.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.paper.browser",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, nargs="?", default=Path("paper/report.html"))
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"browser check: {args.report} does not exist (build it: nox -s paper)",
              file=sys.stderr)
        return 2
    result = check_report(args.report, args.screenshot)
    print(f"browser check: {result.images} figure(s) loaded in Chromium; screenshot "
          f"{result.screenshot}")
    for problem in result.problems:
        print(f"browser check: {problem}", file=sys.stderr)
    return 1 if result.problems or not result.images else 0


if __name__ == "__main__":
    raise SystemExit(main())
