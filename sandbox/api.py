"""The public Python API the CLI is a thin layer over."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from sandbox.data import load_experiment_data
from sandbox.errors import DataError
from sandbox.models import ModelSpec
from sandbox.results import RunDirectory, RunRecorder, RunResult, write_run

if TYPE_CHECKING:
    from sandbox.config import Config


def run(config: Config, *, callbacks=(), prior_ledger=None) -> RunResult:
    """Run one federated experiment and write its results directory.

    Everything that can be wrong with the inputs (config, data files, model/data
    mismatch) is checked before the directory is created.

    Parameters
    ----------
    config : Config
        From :func:`sandbox.load_config`.
    callbacks : iterable of callables ``(server_round, row) -> None``
        Called after every round's centralized evaluation with that round's metrics row
        (``central_accuracy``, ``central_loss``, privacy columns). A callback may raise
        :class:`sandbox.errors.RunPruned` to stop the run; its directory is then kept as
        ``<run>.pruned`` with ``metrics.json`` and ``ledger.json`` so far.
    prior_ledger : PrivacyLedger, optional
        Privacy already spent on the same data (earlier tuning trials): the run's
        ``privacy.budget_epsilon`` then bounds the composition of both.

    Returns
    -------
    RunResult
        Per-round metrics as plain dicts, final metrics, wall time and the run directory.
    """
    started = time.perf_counter()
    data = load_experiment_data(config)
    spec = ModelSpec.from_config(config.model, data.input_shape, data.num_classes)
    _check_client_sizes(config, data)
    from sandbox.runtime import run_federation

    run_dir = RunDirectory(config)
    recorder = RunRecorder(config, run_dir, callbacks, prior_ledger)
    try:
        try:
            run_federation(config, recorder)
        finally:
            recorder.stop_progress()
        if recorder.stop_exception is not None:
            raise recorder.stop_exception
        if recorder.result is None:
            raise RuntimeError(
                f"the {config.backend} backend finished without a result; see the log above"
            )
        audits = {}
        if config.privacy.audit.membership or config.privacy.audit.canaries:
            from clients.app import record_to_arrays
            from clients.audit import run_audits

            audits = run_audits(config, spec, record_to_arrays(spec, recorder.result.arrays))
        return write_run(run_dir, config, data, spec, recorder,
                         time.perf_counter() - started, audits)
    except BaseException as exc:
        recorder.save_partial()
        failed = run_dir.fail(exc)
        exc.add_note(f"partial results kept in {failed}")
        with contextlib.suppress(AttributeError):  # for callers that track every run (studies)
            exc.run_dir = failed
        raise


def _check_client_sizes(config: Config, data) -> None:
    empty = [cid for cid, c in enumerate(data.clients) if len(c.y_train) == 0]
    if empty:
        raise DataError(
            f"data.partitioner='{config.data.partitioner}' left {len(empty)} of "
            f"{len(data.clients)} clients without training data (first: {empty[:5]}); "
            "use fewer data.num_clients or a larger data.min_partition_size"
        )
    if config.federation.fraction_evaluate > 0 and sum(len(c.y_test) for c in data.clients) == 0:
        raise DataError(
            "no client has local test data (data.test_fraction too small); set "
            "data.test_fraction > 0 or federation.fraction_evaluate = 0"
        )
