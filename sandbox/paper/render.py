"""report.md and a self-contained report.html (figures embedded as base64 data URIs).

Every table and figure caption ends with its section's config hashes and the package
versions; timing figures also name the CPU and the thread settings.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import re

from sandbox.paper.model import Build, Section
from sandbox.paper.provenance import code_version, machine_text, versions_text


def provenance(section: Section, *, timing: bool = False) -> str:
    configs = ", ".join(f"{file} {digest}" for file, digest in section.config_hashes.items())
    text = f"Config hash: {configs}; code {code_version()}; {versions_text()}."
    return text + (f" {machine_text()}." if timing else "")


def _header(result: Build, quick: bool) -> str:
    reused = ", ".join(result.reused) or "none"
    return (f"{'Quick build (tiny configs, configs/paper/quick/)' if quick else 'Full build'}"
            f" of {dt.date.today().isoformat()}: {result.wall_s / 60:.1f} min wall time "
            f"(sections reused from an earlier build: {reused}). Every number is a mean "
            "± 95 % confidence interval (Student t) over N experiment seeds unless the "
            "caption says it is a single seed.")


def write_markdown(result: Build, title: str, quick: bool) -> None:
    parts = [f"# {title}", _header(result, quick)]
    tables = figures = 0
    for section in result.sections:
        parts.append(f"## {section.title}")
        if section.status != "done":
            parts.append(f"**{section.status.capitalize()}**: {section.reason}")
            continue
        parts.append(section.text)
        for table in section.tables:
            tables += 1
            parts.append(f"**Table {tables}.** {table.caption} {provenance(section)}")
            lines = ["| " + " | ".join(table.columns) + " |",
                     "|" + "---|" * len(table.columns)]
            lines += ["| " + " | ".join(row) + " |" for row in table.rows]
            parts.append("\n".join(lines))
        for figure in section.figures:
            figures += 1
            caption = f"{figure.caption} {provenance(section, timing=figure.timing)}"
            parts.append(f"![Figure {figures}](sections/{section.name}/{figure.file})\n\n"
                         f"*Figure {figures}.* {caption}")
    (result.out / "report.md").write_text("\n\n".join(parts) + "\n")


STYLE = """body{font-family:sans-serif;max-width:60rem;margin:2rem auto;line-height:1.45}
table{border-collapse:collapse;margin:.5rem 0 1.5rem;font-size:.9rem}
td,th{border:1px solid #bbb;padding:.2rem .5rem;text-align:left}
figure{margin:1rem 0 2rem}img{max-width:100%}figcaption,caption{font-size:.85rem;color:#333;
text-align:left;caption-side:top;padding-bottom:.3rem}.status{color:#a00}"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def write_html(result: Build, title: str, quick: bool) -> None:
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{_inline(_header(result, quick))}</p>"]
    tables = figures = 0
    for section in result.sections:
        body.append(f'<h2 id="{section.name}">{html.escape(section.title)}</h2>')
        if section.status != "done":
            body.append(f'<p class="status"><b>{section.status.capitalize()}</b>: '
                        f"{_inline(section.reason)}</p>")
            continue
        body.append(f"<p>{_inline(section.text)}</p>")
        for table in section.tables:
            tables += 1
            head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                           + "</tr>" for row in table.rows)
            body.append(f"<table><caption><b>Table {tables}.</b> {_inline(table.caption)} "
                        f"{_inline(provenance(section))}</caption><tr>{head}</tr>{rows}"
                        "</table>")
        for figure in section.figures:
            figures += 1
            data = base64.b64encode(
                (result.out / "sections" / section.name / figure.file).read_bytes()).decode()
            caption = f"{figure.caption} {provenance(section, timing=figure.timing)}"
            body.append(f'<figure><img src="data:image/png;base64,{data}" '
                        f'alt="Figure {figures}"><figcaption><b>Figure {figures}.</b> '
                        f"{_inline(caption)}</figcaption></figure>")
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<link rel="icon" href="data:,">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    (result.out / "report.html").write_text(page)
