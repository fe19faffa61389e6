"""``python -m sandbox.paper [--quick] [--out DIR] [--manifest FILE] [--force]``.

Exit status: 0 when every section was built (or reused) or skipped with a reason, 1 when
a section failed (the report still says why), 2 for bad input (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox.core.errors import SandboxError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.paper",
        description="regenerate every table and figure of the report (docs/paper.md)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny configs (configs/paper/quick/), minutes")
    parser.add_argument("--out", type=Path, default=Path("paper"),
                        help="output directory (default: paper)")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="the sections' manifest (default: configs/paper[/quick]/"
                             "paper.toml)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild every section, even unchanged ones")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"paper: error: --out {args.out} is a file; allowed: a directory (created if "
              "missing)", file=sys.stderr)
        return 2
    from sandbox.paper.build import build

    try:
        result = build(args.out, quick=args.quick, manifest=args.manifest, force=args.force)
    except SandboxError as exc:
        print(f"paper: error: {exc}", file=sys.stderr)
        return 2
    print(f"paper: {args.out / 'report.md'} and {args.out / 'report.html'} in "
          f"{result.wall_s / 60:.1f} min")
    for section in result.sections:
        if section.status != "done":
            print(f"paper: {section.name} {section.status}: {section.reason}", file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
