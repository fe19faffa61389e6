"""Client selection and aggregation order are pure functions of the config and seed.

The matrix: framework x thread count x backend x execution mode (``runtime.torch_mode`` /
``keras_mode``) x "alone in a fresh process" vs "after other runs in the same process".
Every cell must give the same per-round metrics and the same clients (the vectorized
backend, torch only: the same as itself, and the inline metrics within float32 rounding).
"""

from __future__ import annotations

import json

import pytest

import sandbox
from clients.threads import DEFAULT_THREADS, ThreadsUnavailable, tensorflow_threads
from sandbox.core.sampling import clients_for_round, sample_size
from tests.conftest import ROOT, small_overrides
from tests.test_runtime import _subprocess_run

PARTIAL = {"rounds": 3, "data.num_clients": 6, "federation.fraction_train": 0.5,
           "federation.fraction_evaluate": 0.5}

RUN = """
import json, sys
import sandbox
from tests.conftest import small_overrides
from pathlib import Path
tmp = Path({tmp!r})
for extra in {before!r}:  # other work in the same process first
    sandbox.run(sandbox.load_config("configs/quickstart.toml", small_overrides(tmp, **extra)))
result = sandbox.run(sandbox.load_config("configs/quickstart.toml",
                                         small_overrides(tmp, **{extra!r})))
participation = json.loads((result.run_dir / "participation.json").read_text())
print(json.dumps({{"rounds": result.rounds, "participation": participation}}))
"""


def test_sampling_is_a_pure_function():
    first = clients_for_round(7, 3, "train", range(10), 0.3)
    assert first == clients_for_round(7, 3, "train", reversed(range(10)), 0.3)
    assert len(first) == sample_size(10, 0.3) == 3 and first == sorted(first)
    assert clients_for_round(7, 4, "train", range(10), 0.3) != first or \
        clients_for_round(7, 5, "train", range(10), 0.3) != first
    assert clients_for_round(7, 3, "train", range(10), 1.0) == list(range(10))
    assert clients_for_round(7, 3, "evaluate", range(10), 0.0) == []


def test_sampling_is_uniform_over_clients():
    """Over 2000 rounds each of 10 clients is drawn ~30 % of the time (3 of 10)."""
    counts = [0] * 10
    for server_round in range(1, 2001):
        for pid in clients_for_round(0, server_round, "train", range(10), 0.3):
            counts[pid] += 1
    # Binomial(2000, 0.3): sd 20.5; 5 sd bounds give a false-failure rate below 1e-5.
    assert all(abs(c - 600) < 103 for c in counts), counts


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("framework", ["torch", "keras", "mixed"])
def test_determinism_matrix(tmp_path, framework, threads):
    """Alone vs after other runs, inline vs Ray and pool (vectorized for torch): the same
    clients and metrics.

    At 1 thread per client and server (the default: no override) and at 2, so a backend
    whose thread count comes from the machine or from ``OMP_NUM_THREADS`` instead of the
    config fails here (torch's losses differ in the last bits between 1 and 2 threads).
    """
    assert DEFAULT_THREADS == 1  # the 1-thread cells are the default cells
    counts = {} if threads == DEFAULT_THREADS else {
        "runtime.threads_per_client": threads, "runtime.server_threads": threads}
    extra = {"framework": framework, **PARTIAL, **counts}
    other = "keras" if framework == "torch" else "torch"
    cells = {
        "inline, alone": _subprocess_run(RUN.format(tmp=str(tmp_path / "a"), before=[],
                                                    extra=extra)),
        "inline, after other runs": _subprocess_run(RUN.format(
            tmp=str(tmp_path / "b"), extra=extra,
            before=[{"framework": other, "seed": 5, **counts},
                    {"framework": framework, "seed": 9, **counts}])),
        "ray, alone": _subprocess_run(RUN.format(tmp=str(tmp_path / "c"), before=[],
                                                 extra=extra | {"backend": "ray"})),
        "pool, alone": _subprocess_run(RUN.format(
            tmp=str(tmp_path / "e"), before=[],
            extra=extra | {"backend": "pool", "runtime.workers": 2})),
    }
    reference = cells["inline, alone"]
    chosen = reference["participation"]
    assert [len(chosen[str(r)]["train"]) for r in (1, 2, 3)] == [3, 3, 3]
    for name, cell in cells.items():
        assert cell["participation"] == chosen, name
        assert json.dumps(cell["rounds"]) == json.dumps(reference["rounds"]), name
    if framework == "torch":
        # vectorized: equal to itself bit for bit, to inline within float32 rounding
        # (its batched kernels sum in another order; tests/test_vectorized.py)
        batched = {"backend": "vectorized"}
        alone = _subprocess_run(RUN.format(tmp=str(tmp_path / "f"), before=[],
                                           extra=extra | batched))
        after = _subprocess_run(RUN.format(
            tmp=str(tmp_path / "g"), extra=extra | batched,
            before=[{"seed": 5, **counts}, {"seed": 9, **counts, **batched}]))
        assert alone["participation"] == after["participation"] == chosen
        assert json.dumps(after["rounds"]) == json.dumps(alone["rounds"])
        for row, want in zip(alone["rounds"], reference["rounds"], strict=True):
            for key, value in want.items():
                if isinstance(value, float):
                    assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    in_process = sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                                     small_overrides(tmp_path / "d", **extra))
    if framework in ("keras", "mixed") and threads != DEFAULT_THREADS:
        # This process's TensorFlow runs with the default count (the other tests' runs),
        # which it cannot change: the run must refuse before writing anything.
        _tensorflow_started_with(DEFAULT_THREADS)
        with pytest.raises(ThreadsUnavailable, match=f"needs TensorFlow with {threads} thr"):
            sandbox.run(in_process)
        assert not (tmp_path / "d").exists()
        return
    assert json.dumps(sandbox.run(in_process).rounds) == json.dumps(reference["rounds"])


def _tensorflow_started_with(count: int) -> None:
    import tensorflow as tf

    tensorflow_threads(count)  # raises if this process's TensorFlow runs another count
    tf.constant(0.0).numpy()  # the first op starts TensorFlow, which fixes its pools


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("strategy", ["scaffold", "fednova", "qfedavg", "krum", "multikrum",
                                      "bulyan"])
def test_new_strategies_repeat_in_a_fresh_process_and_after_other_runs(tmp_path, strategy,
                                                                       threads):
    """The strategies with server or client state (SCAFFOLD's control variates, FedNova's
    normalized steps, q-FFL's pre-training loss, the byzantine selections) give the same
    clients and metrics alone in a fresh process and in this one after other runs, at
    1 and 2 threads per client."""
    counts = {"runtime.threads_per_client": threads, "runtime.server_threads": threads}
    extra = {"federation.strategy": strategy, "heterogeneity.local_steps": [2, 3, 4, 5, 2, 3],
             **PARTIAL, **counts}
    fresh = _subprocess_run(RUN.format(tmp=str(tmp_path / "a"), before=[], extra=extra))
    sandbox.run(sandbox.load_config(ROOT / "configs" / "quickstart.toml", small_overrides(
        tmp_path / "b", seed=3, **{"federation.strategy": strategy, **counts})))
    again = sandbox.run(sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                                            small_overrides(tmp_path / "c", **extra)))
    assert json.dumps(again.rounds) == json.dumps(fresh["rounds"])
    assert again.rounds[-1]["central_val_accuracy"] is not None


#: the execution modes other than the defaults (torch eager, Keras graph), at 1 and 2
#: threads per client; torch.compile under the slow marker (TorchInductor compiles for
#: about a minute on a 2-core machine)
EXECUTION_MODES = [
    pytest.param("keras", "eager", 1, False, id="keras-eager-1"),
    pytest.param("keras", "eager", 2, False, id="keras-eager-2"),
    pytest.param("keras", "xla", 1, False, id="keras-xla-1"),
    pytest.param("keras", "xla", 2, False, id="keras-xla-2", marks=pytest.mark.slow),
    pytest.param("keras", "eager", 1, True, id="keras-eager-1-dp", marks=pytest.mark.slow),
    pytest.param("keras", "xla", 1, True, id="keras-xla-1-dp", marks=pytest.mark.slow),
    pytest.param("keras", "xla", 2, True, id="keras-xla-2-dp", marks=pytest.mark.slow),
    pytest.param("torch", "compile", 1, False, id="torch-compile-1", marks=pytest.mark.slow),
    pytest.param("torch", "compile", 2, False, id="torch-compile-2", marks=pytest.mark.slow),
    pytest.param("torch", "compile", 1, True, id="torch-compile-1-dp", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("framework", "mode", "threads", "private"), EXECUTION_MODES)
def test_execution_modes_repeat_alone_and_after_other_runs(tmp_path, framework, mode, threads,
                                                           private):
    """``runtime.torch_mode`` / ``keras_mode``: the same clients and metrics alone in a fresh
    process and after other runs (the other framework, this framework's default mode, this
    mode with another seed), with and without seeded DP-SGD.

    At 1 thread the other runs are in this process (after whatever the suite ran before);
    at 2 in a fresh one, since this process's TensorFlow is fixed at 1 thread.
    """
    key = f"runtime.{framework}_mode"
    counts = {"runtime.threads_per_client": threads, "runtime.server_threads": threads}
    dp = {"privacy.sample.enabled": True, "privacy.noise": "seeded"} if private else {}
    extra = {"framework": framework, key: mode, **PARTIAL, **counts, **dp}
    other = "keras" if framework == "torch" else "torch"
    before = [{"framework": other, "seed": 5, **counts, **dp},
              {"framework": framework, "seed": 7, **counts, **dp}, {**extra, "seed": 9}]
    alone = _subprocess_run(RUN.format(tmp=str(tmp_path / "a"), before=[], extra=extra))
    if threads == DEFAULT_THREADS:
        for overrides in [*before, extra]:
            result = sandbox.run(sandbox.load_config(ROOT / "configs" / "quickstart.toml",
                                                     small_overrides(tmp_path / "b", **overrides)))
        after = {"rounds": result.rounds, "participation": json.loads(
            (result.run_dir / "participation.json").read_text())}
    else:
        after = _subprocess_run(RUN.format(tmp=str(tmp_path / "b"), extra=extra, before=before))
    assert [len(alone["participation"][str(r)]["train"]) for r in (1, 2, 3)] == [3, 3, 3]
    assert after["participation"] == alone["participation"]
    assert json.dumps(after["rounds"]) == json.dumps(alone["rounds"])
    assert alone["rounds"][-1]["central_val_accuracy"] is not None
