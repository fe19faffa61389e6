"""Command line: ``fedsandbox run CONFIG [--set key=value ...]`` (also ``python -m sandbox``).

The top layer: it may use every layer below (engine, search). User errors
(:class:`~sandbox.core.errors.SandboxError`, also as the cause of a
:class:`~sandbox.core.errors.RunFailed`) print one message and exit with code 2; a run
that diverged exits with code 3, one whose clients failed beyond
``federation.min_train_replies`` with code 4; SIGINT/SIGTERM give 130/143 (the run stops
after its current round); internal errors keep their traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from sandbox.core.errors import ClientsFailed, RunFailed, SandboxError
from sandbox.core.results import StopReason

EXIT_USER_ERROR = 2  # bad config, data file, --set value: one message, nothing written
EXIT_DIVERGED = 3  # the run's loss became non-finite; partial results are kept
EXIT_CLIENTS_FAILED = 4  # too few clients replied in a round; partial results are kept
EXIT_SIGINT = 130  # 128 + SIGINT; SIGTERM gives 143 (RunInterrupted.exit_code)


def _command(commands, name: str, help_text: str, config_help: str,
             set_help: str | None = None, set_metavar: str = "KEY=VALUE"):
    """A subcommand taking a TOML file and repeatable ``--set`` overrides."""
    command = commands.add_parser(name, help=help_text)
    command.add_argument("config", help=config_help)
    command.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar=set_metavar, help=set_help)
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsandbox", description="Federated learning + AutoML research sandbox."
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of user errors too (for bug reports)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = _command(commands, "run", "run one federated experiment from a TOML config",
                   "experiment TOML file (see configs/)",
                   "override a config key, e.g. data.alpha=0.1")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bar or summary table; print only the run directory")
    run.add_argument("--resume", action="store_true",
                     help="CONFIG is the directory of a killed or interrupted run: continue "
                     "it from its last round checkpoint")
    sweep = _command(commands, "sweep",
                     "run every combination of a config's [sweep] table (e.g. DP noise)",
                     "experiment TOML with a [sweep] table", "override a key of every run")
    sweep.add_argument("--quiet", action="store_true", help="no per-run progress bars")
    search = _command(commands, "search",
                      "architecture/hyperparameter search over federated runs (study TOML)",
                      "study TOML with [study], [experiment], [space]",
                      "override a study-file key: study.KEY (study.n_trials=40), "
                      "experiment.KEY (experiment.rounds=6) or space.PARAM.FIELD "
                      "(space.lr.high=0.3)", "TABLE.KEY=VALUE")
    search.add_argument("--resume", action="store_true",
                        help="continue the study in its storage (interrupted trials re-run)")
    search.add_argument("--dry-run", action="store_true",
                        help="print the resolved study, space and base experiment; run nothing")
    search.add_argument("--join", action="store_true",
                        help="add workers to a study that runs (from any machine that reaches "
                        "its storage); the process that started the study writes the report")
    search.add_argument("--processes", type=int, metavar="P",
                        help="Optuna worker processes here (default: study.workers; 1 with "
                        "--join); any worker runs any trial, a killed one's trial runs again")
    _command(commands, "twin", "run a config in the sandbox and in TensorFlow Federated "
             "(its own environment: `nox -s tff`) and compare them (docs/twins.md)",
             "experiment TOML (e.g. configs/twin_fedavg.toml)", "override a config key")
    _command(commands, "show-config", "print the resolved config as TOML", "experiment TOML")
    export = commands.add_parser(
        "export", help="export a run's final model (or a study's best) to ONNX, SavedModel "
        "or TFLite, reload it and check its test-set predictions (sandbox/engine/export.py)")
    export.add_argument("run_dir", help="run directory (or a study report with best_model/)")
    export.add_argument("--format", required=True, choices=("onnx", "savedmodel", "tflite"))
    export.add_argument("--out", help="output directory (default: RUN_DIR/export/FORMAT)")
    compare = _command(commands, "compare-frameworks",
                       "the same federation in torch eager, torch.compile, Keras eager, graph "
                       "and XLA, with and without DP-SGD: accuracy, step time, compile cost, "
                       "memory (docs/frameworks.md)", "experiment TOML",
                       "override a key of every run, e.g. rounds=5")
    compare.add_argument("--out", help="output directory (default: "
                         "results/compare_frameworks/<config stem>)")
    compare.add_argument("--modes", help="comma-separated subset of torch-eager, "
                         "torch-compile, keras-eager, keras-graph, keras-xla (default: all)")
    which_dp = compare.add_mutually_exclusive_group()
    which_dp.add_argument("--no-dp", action="store_true", help="only runs without DP-SGD")
    which_dp.add_argument("--dp-only", action="store_true", help="only runs with DP-SGD")
    compare.add_argument("--seeds", type=int, default=1, metavar="N",
                         help="runs per mode (seeds seed..seed+N-1); mean ± 95%% CI")
    compare.add_argument("--target", type=float, help="validation accuracy for the time-to-"
                         "target column (default: 90%% of the best final one per DP setting)")
    listing = commands.add_parser("ls", help="list the runs, sweeps and studies in a "
                                  "results directory with their state")
    listing.add_argument("directory", nargs="?", default="results",
                         help="results directory (default: results)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from sandbox.engine.interrupt import graceful_interrupts

    args = _parser().parse_args(argv)
    handlers = {"run": _run, "show-config": _run, "sweep": _sweep, "search": _search,
                "ls": _ls, "twin": _twin, "export": _export,
                "compare-frameworks": _compare_frameworks}
    try:
        with graceful_interrupts():
            return handlers[args.command](args)
    except SandboxError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"fedsandbox: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFailed as exc:
        if isinstance(exc.cause, ClientsFailed):
            print(f"fedsandbox: run failed: {exc.cause}\n"
                  f"  partial results kept in {exc.run_dir}", file=sys.stderr)
            return EXIT_CLIENTS_FAILED
        if not isinstance(exc.cause, SandboxError):
            raise
        if args.debug:
            traceback.print_exc()
        diverged = exc.stop_reason is StopReason.DIVERGED
        print(f"fedsandbox: {'run diverged' if diverged else 'error'}: {exc.cause}\n"
              f"  partial results kept in {exc.run_dir}", file=sys.stderr)
        return EXIT_DIVERGED if diverged else EXIT_USER_ERROR
    except KeyboardInterrupt as exc:  # also RunInterrupted (SIGINT/SIGTERM)
        if args.debug:
            traceback.print_exc()
        where = getattr(exc, "run_dir", None)
        print(f"fedsandbox: {exc or 'interrupted'}"
              f"{f'; results so far in {where}' if where else ''}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_SIGINT)


def _export(args) -> int:
    from sandbox.engine.export import export_run

    report = export_run(args.run_dir, args.format, out=args.out)
    print(f"{report.format}: {report.built_with}; reloaded and checked on "
          f"{report.test_examples} test examples: max |Δlogit| {report.max_abs_logit_diff:.2g} "
          f"(tolerance {report.tolerance:.2g}), same class {report.agreement:.2%}")
    print(args.out or f"{args.run_dir}/export/{args.format}")
    return 0


def _run(args) -> int:
    from sandbox.engine.preflight import load_config

    overrides = list(args.overrides)
    if args.command == "show-config":
        print(load_config(args.config, overrides).to_toml(), end="")
        return 0
    if args.resume:
        return _resume(args)
    if args.quiet:
        overrides.append("output.progress=false")
    cfg = load_config(args.config, overrides)
    from sandbox.engine.api import run

    result = run(cfg)
    if not args.quiet:
        print_summary(cfg, result)
    print(result.run_dir)  # on a line of its own (the table may cut it); --quiet: only this
    return 0


def _resume(args) -> int:
    from pathlib import Path

    from sandbox.engine.api import resume
    from sandbox.engine.preflight import load_config

    if args.overrides:
        raise SandboxError("--resume continues a run with its own config.toml; --set is "
                           "not allowed")
    result = resume(args.config, progress=False if args.quiet else None)
    if not args.quiet:
        print_summary(load_config(Path(result.run_dir) / "config.toml"), result)
    print(result.run_dir)
    return 0


def _sweep(args) -> int:
    from sandbox.core.tomlio import parse_overrides
    from sandbox.engine.sweep import run_sweep

    path = run_sweep(args.config, dict(parse_overrides(args.overrides)), quiet=args.quiet)
    print(f"sweep results: {path}")
    return 0


def _search(args) -> int:
    from sandbox.core.tomlio import parse_overrides
    from search import dry_run, join_search, run_search

    overrides = dict(parse_overrides(args.overrides))  # study.* / experiment.* / space.*
    if args.dry_run:
        print(dry_run(args.config, overrides), end="")
        return 0
    if args.join:
        if args.resume:
            raise SandboxError("--join adds workers to a running study; --resume restarts "
                               "a stopped one: use one of them")
        stop_reason = join_search(args.config, overrides, processes=args.processes)
        print(f"joined study: {stop_reason}")
        return 0
    report = run_search(args.config, overrides, resume=args.resume, processes=args.processes)
    print(f"study report: {report}")
    best = json.loads((report / "summary.json").read_text())["best"]
    if best is not None:
        print(f"best trial {best['number']}: validation accuracy "
              f"{best['validation_accuracy']:.4f} (what chose it), test accuracy "
              f"{best['test_accuracy']:.4f} (held out)")
    return 0


def _compare_frameworks(args) -> int:
    from pathlib import Path

    from sandbox.core.tomlio import parse_overrides
    from sandbox.engine.frameworks import compare_frameworks

    dp = (False,) if args.no_dp else (True,) if args.dp_only else (False, True)
    modes = None if args.modes is None else tuple(m.strip() for m in args.modes.split(","))
    out = compare_frameworks(args.config, None if args.out is None else Path(args.out),
                             overrides=dict(parse_overrides(args.overrides)), dp=dp,
                             modes=modes, seeds=args.seeds, target=args.target)
    print((out / "frameworks.md").read_text(), end="")
    print(out)
    return 0


def _twin(args) -> int:
    from sandbox.engine.twin import run_twin

    print(f"twin results: {run_twin(args.config, list(args.overrides))}")
    return 0


def _ls(args) -> int:
    from sandbox.engine.listing import format_listing, list_results

    print(format_listing(list_results(args.directory)))
    return 0


def print_summary(cfg, result) -> None:
    from rich.console import Console
    from rich.table import Table

    from sandbox.core.results import best_row

    table = Table(title=f"{cfg.name} — {cfg.framework} on {cfg.backend}, {cfg.rounds} rounds")
    table.add_column("metric")
    table.add_column("value", justify="right")
    labels = {
        "central_val_accuracy": "validation accuracy (server-held val set)",
        "fed_val_accuracy": "federated validation accuracy (clients' val splits)",
        "central_test_accuracy": "test accuracy (global test set)",
        "central_val_loss": "validation loss",
        "central_test_loss": "test loss",
        "train_loss": "client train loss",
    }
    for key, label in labels.items():
        if key in result.final:
            table.add_row(f"final {label}", f"{result.final[key]:.4f}")
    best = best_row(result.rounds)
    if best is not None:
        table.add_row("best round by validation accuracy",
                      f"{best['round']}: val {best['central_val_accuracy']:.4f}, "
                      f"test {best['central_test_accuracy']:.4f}")
    if result.epsilon is not None:
        table.add_row(f"ε at δ={cfg.privacy.delta:g} ({cfg.privacy.accountant})",
                      f"{result.epsilon:.4g}" if result.epsilon_upper_bound
                      else f"{result.epsilon:.4g} (not an upper bound)")
    table.add_row("stopped", result.stop_reason.value if result.stopped_early is None
                  else f"{result.stop_reason.value}: {result.stopped_early.reason}")
    table.add_row("wall time (s)", f"{result.wall_s:.1f}")
    table.add_row("config hash", result.config_hash)
    table.add_row("run directory", str(result.run_dir))
    Console().print(table)
    for caveat in result.epsilon_caveats:  # whole lines: a table cell would wrap them
        print(f"ε is not an upper bound: {caveat}")


if __name__ == "__main__":
    sys.exit(main())
