"""The public Python API the CLI is a thin layer over: :func:`run` and :func:`resume`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from clients import framework_threads
from sandbox.core.errors import RunDiverged, RunFailed, RunPruned, SandboxError
from sandbox.core.results import RunResult, StopReason
from sandbox.engine.preflight import Prepared, preflight
from sandbox.engine.recorder import RunRecorder
from sandbox.engine.rundir import RunDirectory, write_run
from sandbox.engine.runtime import reserve_threads

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from sandbox.core.config import Config
    from sandbox.core.privacy import PrivacyLedger
    from sandbox.engine.checkpoint import Checkpoint


def run(config: Config, *, callbacks=(), prior_ledger: PrivacyLedger | None = None
        ) -> RunResult:
    """Run one federated experiment and write its results directory.

    Everything that can be wrong with the inputs (config, strategy arguments, data files,
    model/data mismatch, DP calibration) is checked before the directory is created.

    Parameters
    ----------
    config : Config
        From :func:`sandbox.load_config`.
    callbacks : iterable of callables ``(server_round, row) -> None``
        Called after every round's centralized evaluation with that round's metrics row
        (``central_val_*``, ``central_test_*``, privacy columns; test columns are for
        reporting only, never for choosing). A callback may raise
        :class:`~sandbox.core.errors.RunPruned` or
        :class:`~sandbox.core.errors.RunDiverged` to stop the run.
    prior_ledger : PrivacyLedger, optional
        Privacy already spent on the same data (earlier tuning trials): the run's
        ``privacy.budget_epsilon`` then bounds the composition of both.

    Returns
    -------
    RunResult
        Per-round metrics, final metrics, ε, stop reason (finished or budget), the run
        directory.

    Raises
    ------
    ConfigError, DataError
        Before anything is written.
    RunFailed
        The run stopped after its directory existed (pruned, diverged, failed); the
        cause, the partial results' directory and the stop reason are attributes.
    """
    started = time.perf_counter()
    prepared = preflight(config)
    if config.backend == "deployment":  # the ServerApp runs (and records) in Flower's process
        from sandbox.engine.runtime.deployment import run_deployment

        if callbacks or prior_ledger is not None:
            raise SandboxError("backend 'deployment' runs the server in Flower's SuperExec "
                               "process: round callbacks and a prior privacy ledger (search "
                               "trials) need backend 'inline', 'pool' or 'ray'")
        return run_deployment(config, RunDirectory(config))
    reserve_threads(config)
    run_dir = RunDirectory(config)
    return _execute(config, run_dir, prepared, started, callbacks=callbacks,
                    prior_ledger=prior_ledger)


def run_on_grid(config: Config, grid: Grid, *, run_dir: Path | None = None) -> RunResult:
    """Run ``config`` on a ``Grid`` someone else provides (the Flower App's ServerApp).

    The same pre-flight, recorder and results directory as :func:`run`; ``run_dir`` is an
    existing ``<run>.partial`` directory to write into (created by the ``fedsandbox run``
    process of ``backend = "deployment"``), or ``None`` for a new one under
    ``output.dir``.
    """
    started = time.perf_counter()
    prepared = preflight(config)
    reserve_threads(config)
    directory = RunDirectory(config) if run_dir is None else RunDirectory.reopen(run_dir)
    return _execute(config, directory, prepared, started, grid=grid)


def resume(run_dir: str | Path, *, callbacks=(), progress: bool | None = None) -> RunResult:
    """Continue a run that was killed or interrupted, from its last round checkpoint.

    ``run_dir`` is the run's directory (``<run>.partial`` after kill -9,
    ``<run>.interrupted`` or ``<run>.failed``). Its ``config.toml`` is re-validated and
    must match the checkpoint; the run continues in that directory, which gets its
    final name when the run finishes. ``progress`` overrides ``output.progress``. The
    finished run's ``metrics.json`` equals that of an uninterrupted run (same config and
    seed) byte for byte.

    Raises
    ------
    SandboxError
        No such directory, no checkpoint, a config that differs from the checkpoint's,
        or a backend other than ``inline``, ``vectorized`` or ``pool`` (whose node states
        live in this process's grid, so the checkpoint holds them).
    """
    from sandbox.engine.checkpoint import load_checkpoint
    from sandbox.engine.preflight import load_config

    started = time.perf_counter()
    path = Path(run_dir)
    if not (path / "config.toml").is_file():
        raise SandboxError(f"--resume: {path} is not a run directory (no config.toml)")
    config = load_config(path / "config.toml")
    if not path.name.endswith((".partial", ".interrupted", ".failed")):
        raise SandboxError(f"--resume: {path} is a finished run (only a .partial, "
                           ".interrupted or .failed run directory can be continued)")
    if progress is not None:  # output settings are not part of the config hash
        config = config.model_copy(update={"output": config.output.model_copy(
            update={"progress": progress})})
    if config.backend not in RESUMABLE_BACKENDS:
        why = _NOT_RESUMABLE.get(config.backend, "its clients' state lived outside this "
                                                 "process")
        raise SandboxError(f"--resume: {path} ran on backend '{config.backend}', which "
                           f"cannot be resumed ({why}); only backend 'inline', "
                           "'vectorized' and 'pool' runs continue from a checkpoint: start "
                           "the run again")
    checkpoint = load_checkpoint(path, config.config_hash())
    prepared = preflight(config)
    reserve_threads(config)
    directory = RunDirectory.reopen(path)
    return _execute(config, directory, prepared, started, callbacks=callbacks,
                    resume=checkpoint)


#: Backends whose node states live in this process's grid (checkpointed, restored).
RESUMABLE_BACKENDS = ("inline", "vectorized", "pool")
#: Why a run of a backend cannot be continued from its round checkpoint.
_NOT_RESUMABLE = {
    "ray": "its clients' state lived in the Ray actors of Flower's simulation, gone with "
           "the run",
    "deployment": "its clients' state lived in the SuperNodes and its server in Flower's "
                  "SuperExec process, out of this process's reach",
}


def _execute(config: Config, run_dir: RunDirectory, prepared: Prepared, started: float, *,
             callbacks=(), prior_ledger: PrivacyLedger | None = None,
             resume: Checkpoint | None = None, grid: Grid | None = None) -> RunResult:
    """Run the federation into ``run_dir``; publish it, or keep it as failed/interrupted.

    With ``grid`` the ServerApp's strategy runs on it in this thread (no runtime backend).
    """
    from sandbox.engine.runtime import run_federation
    from sandbox.engine.server import run_strategy

    tensorboard = run_dir.path / "tensorboard" if config.output.tensorboard else None
    recorder = RunRecorder(config, tensorboard_dir=tensorboard, callbacks=callbacks,
                           prior_ledger=prior_ledger, resume=resume,
                           checkpoint_dir=run_dir.path if config.output.checkpoint else None)
    try:
        try:
            if grid is None:
                run_federation(config, recorder, resume)
            else:
                run_strategy(config, grid, recorder)
        finally:
            recorder.stop_progress()
        if recorder.stop_exception is not None:
            raise recorder.stop_exception
        if not recorder.finished:
            raise RuntimeError(
                f"the {config.backend} backend finished without a result; see the log above"
            )
        record = recorder.finish(prepared.spec)
        audits = {}
        if config.privacy.audit.membership or config.privacy.audit.canaries:
            from clients import run_audits

            with framework_threads(config.framework, config.runtime.server_threads):
                audits = run_audits(config, prepared.spec, list(record.weights.values()))
        return write_run(run_dir, config, prepared.data, record,
                         time.perf_counter() - started, audits)
    except BaseException as exc:
        reason = stop_reason_of(exc)
        failed = run_dir.fail(config, exc, reason, rows=recorder.rows_so_far(),
                              ledger=recorder.ledger_so_far())
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not ours to wrap
            exc.run_dir = failed  # the CLI names it in its one-line message
            exc.add_note(f"partial results kept in {failed}")
            raise
        raise RunFailed(exc, run_dir=failed, stop_reason=reason) from exc


def stop_reason_of(exc: BaseException) -> StopReason:
    if isinstance(exc, RunPruned):
        return StopReason.PRUNED
    if isinstance(exc, RunDiverged):
        return StopReason.DIVERGED
    if isinstance(exc, KeyboardInterrupt):
        return StopReason.INTERRUPTED
    return StopReason.FAILED
