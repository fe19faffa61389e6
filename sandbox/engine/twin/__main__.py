"""``python -m sandbox.engine.twin CONFIG [--set KEY=VALUE ...]`` (what ``nox -s tff`` runs)."""

from __future__ import annotations

import argparse
import json
import sys

from sandbox.core.errors import RunFailed, SandboxError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.engine.twin",
        description="run a config in the sandbox and in TensorFlow Federated; compare")
    parser.add_argument("config", help="experiment TOML (e.g. configs/twin_fedavg.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    from sandbox.engine.twin import run_twin

    try:
        twin_dir = run_twin(args.config, args.overrides)
    except SandboxError as exc:
        print(f"twin: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        if not isinstance(exc.cause, SandboxError):
            raise
        print(f"twin: error: {exc.cause}\n  partial results kept in {exc.run_dir}",
              file=sys.stderr)
        return 2
    summary = json.loads((twin_dir / "comparison.json").read_text())["summary"]
    print(json.dumps(summary, indent=2))
    print(twin_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
