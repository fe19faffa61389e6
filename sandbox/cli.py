"""Command line: ``fedsandbox run CONFIG [--set key=value ...]`` (also ``python -m sandbox``)."""

from __future__ import annotations

import argparse
import sys

from sandbox.errors import SandboxError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsandbox", description="Federated learning + AutoML research sandbox."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one federated experiment from a TOML config")
    run.add_argument("config", help="experiment TOML file (see configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="KEY=VALUE", help="override a config key, e.g. data.alpha=0.1")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    sweep = commands.add_parser(
        "sweep", help="run every combination of a config's [sweep] table (e.g. DP noise)")
    sweep.add_argument("config", help="experiment TOML with a [sweep] table")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a key of every run")
    sweep.add_argument("--quiet", action="store_true", help="no per-run progress bars")
    search = commands.add_parser(
        "search", help="architecture/hyperparameter search over federated runs (study TOML)")
    search.add_argument("config", help="study TOML with [study], [experiment], [space]")
    search.add_argument("--resume", action="store_true",
                        help="continue the study in its storage (interrupted trials re-run)")
    search.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="study.KEY=VALUE", help="override a [study] key")
    show = commands.add_parser("show-config", help="print the resolved config as TOML")
    show.add_argument("config")
    show.add_argument("--set", dest="overrides", action="append", default=[],
                      metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from sandbox.config import load_config

    if args.command == "sweep":
        return _sweep(args)
    if args.command == "search":
        return _search(args)
    try:
        overrides = list(args.overrides)
        if getattr(args, "quiet", False):
            overrides.append("output.progress=false")
        cfg = load_config(args.config, overrides)
        if args.command == "show-config":
            print(cfg.to_toml(), end="")
            return 0
        from sandbox.api import run

        result = run(cfg)
    except SandboxError as exc:
        print(f"fedsandbox: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print_summary(cfg, result)
    return 0


def _sweep(args) -> int:
    from sandbox.config import parse_overrides
    from sandbox.sweep import run_sweep

    try:
        path = run_sweep(args.config, dict(parse_overrides(args.overrides)), quiet=args.quiet)
    except SandboxError as exc:
        print(f"fedsandbox: error: {exc}", file=sys.stderr)
        return 2
    print(f"sweep results: {path}")
    return 0


def _search(args) -> int:
    from sandbox.config import parse_overrides
    from search import run_search

    try:
        overrides = {}
        for key, value in parse_overrides(args.overrides):
            if not key.startswith("study."):
                raise SandboxError(f"--set {key}: search overrides are [study] keys "
                                   "(study.n_trials=..., study.sampler=...)")
            overrides[key.removeprefix("study.")] = value
        path = run_search(args.config, overrides, resume=args.resume)
    except SandboxError as exc:
        print(f"fedsandbox: error: {exc}", file=sys.stderr)
        return 2
    print(f"study report: {path}")
    return 0


def print_summary(cfg, result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{cfg.name} — {cfg.framework} on {cfg.backend}, {cfg.rounds} rounds")
    table.add_column("metric")
    table.add_column("value", justify="right")
    labels = {
        "central_accuracy": "centralized accuracy (global test)",
        "central_loss": "centralized loss",
        "eval_accuracy": "federated eval accuracy (client test)",
        "eval_loss": "federated eval loss",
        "train_loss": "client train loss",
    }
    for key, label in labels.items():
        if key in result.final:
            table.add_row(label, f"{result.final[key]:.4f}")
    best = max(result.metric("central_accuracy"), default=float("nan"))
    table.add_row("best centralized accuracy", f"{best:.4f}")
    table.add_row("wall time (s)", f"{result.wall_s:.1f}")
    table.add_row("config hash", result.config_hash)
    table.add_row("run directory", str(result.run_dir))
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
