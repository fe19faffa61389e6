"""Search: space translations, Optuna studies (pruning, failures, resume, workers), KerasTuner."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sandbox import ConfigError
from search.space import SearchSpace
from tests.conftest import ROOT

SPACE = {
    "depth": {"type": "int", "low": 1, "high": 3, "key": "model.hidden#len"},
    "width_0": {"type": "int", "low": 8, "high": 64, "log": True, "key": "model.hidden[0]"},
    "width_1": {"type": "int", "low": 8, "high": 64, "step": 8, "key": "model.hidden[1]",
                "when": {"depth": [2, 3]}},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"], "key": "train.optimizer"},
    "momentum": {"type": "float", "low": 0.0, "high": 0.9, "key": "train.momentum",
                 "when": {"optimizer": ["sgd"]}},
    "lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True, "key": "train.lr"},
}

STUDY = """
[study]
name = "{name}"
experiment = "{root}/configs/quickstart.toml"
output_dir = "{out}"
n_trials = {n_trials}
seed = 3
sampler = "{sampler}"
pruner = "{pruner}"
{extra_study}

[experiment]
rounds = {rounds}
data.num_clients = 4
train.batch_size = 32
model.arch = "mlp"
model.hidden = [16]
train.momentum = 0.0
train.local_epochs = 1
output.plot = false
{extra_experiment}

[space.lr]
type = "float"
low = 0.01
high = 0.5
log = true
key = "train.lr"

[space.width]
type = "int"
low = 8
high = 64
log = true
key = "model.hidden[0]"
{extra_space}
"""


def write_study(tmp_path: Path, *, name="s", n_trials=4, sampler="tpe", pruner="none",
                rounds=3, extra_study="", extra_experiment="", extra_space="") -> Path:
    """A study file; ``sampler=None`` / ``pruner=None`` leave those (Optuna) keys out."""
    path = tmp_path / f"{name}.toml"
    text = STUDY.format(name=name, root=ROOT, out=tmp_path / "out", n_trials=n_trials,
                        sampler=sampler, pruner=pruner, rounds=rounds,
                        extra_study=extra_study, extra_experiment=extra_experiment,
                        extra_space=extra_space)
    path.write_text(text.replace('sampler = "None"\n', "").replace('pruner = "None"\n', ""))
    return path


def read_trials(study_dir: Path) -> list[dict]:
    return list(csv.DictReader((study_dir / "trials.csv").open()))


def assert_selected_on_validation(study_dir: Path) -> None:
    """Values, pruning reports and the best trial come from validation; test only beside."""
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{study_dir / 'study.db'}")
    scored = {}
    for trial in study.trials:
        if trial.state.name not in ("COMPLETE", "PRUNED"):
            continue
        rows = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        val = [r["central_val_accuracy"] for r in rows[1:]]
        test = [r["central_test_accuracy"] for r in rows[1:]]
        assert val != test, "validation and test columns must differ somewhere"
        assert trial.user_attrs["accuracy"] == val[-1]
        assert trial.user_attrs["test_accuracy"] == test[-1]
        assert trial.user_attrs["accuracy_per_round"] == val
        if trial.intermediate_values:  # what the pruner saw
            assert list(trial.intermediate_values.values()) == val[:len(
                trial.intermediate_values)]
        if trial.state.name == "COMPLETE":
            assert trial.value == val[-1]
            scored[trial.number] = val[-1]
    summary = json.loads((study_dir / "summary.json").read_text())
    best = summary["best"]
    assert scored[best["number"]] == max(scored.values()) == best["validation_accuracy"]
    assert best["test_accuracy"] == study.trials[best["number"]].user_attrs["test_accuracy"]


# -- space ----------------------------------------------------------------------------------
def test_optuna_and_kerastuner_translations_give_the_same_space():
    import keras_tuner
    import optuna

    space = SearchSpace.from_dict(SPACE)
    hp = keras_tuner.HyperParameters()
    space.declare_keras_tuner(hp)
    kt = {h.name: h for h in hp.space}
    distributions = space.optuna_distributions()
    assert set(kt) == set(distributions) == set(SPACE)
    for name, dist in distributions.items():
        h = kt[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            assert list(h.values) == list(dist.choices)
            continue
        assert (h.min_value, h.max_value) == (dist.low, dist.high)
        assert (h.sampling == "log") == dist.log
        assert (h.step or 1 if isinstance(h, keras_tuner.engine.hyperparameters.Int)
                else h.step) == dist.step
        parents = {c.name: list(c.values) for c in h.conditions}
        assert parents == {k: list(v) for k, v in space.by_name[name].when.items()}
    # Same active set for the same parent values in both translations.
    for depth, optimizer in [(1, "adam"), (2, "sgd"), (3, "adam")]:
        fixed = {"depth": depth, "width_0": 16, "width_1": 16, "optimizer": optimizer,
                 "momentum": 0.5, "lr": 0.1}
        values = space.suggest_optuna(optuna.trial.FixedTrial(fixed))
        hp.values.update({"depth": depth, "optimizer": optimizer})
        kt_active = {n for n in SPACE if hp.is_active(n)}
        assert set(values) == kt_active


def test_space_applies_list_lengths_and_elements():
    space = SearchSpace.from_dict(SPACE)
    raw = {"model": {"hidden": [64]}, "train": {}}
    out = space.apply(raw, {"depth": 2, "width_0": 10, "width_1": 24})
    assert out["model"]["hidden"] == [10, 24] and raw["model"]["hidden"] == [64]
    assert space.apply(raw, {"depth": 1, "width_0": 10})["model"]["hidden"] == [10]


@pytest.mark.parametrize("entry,needle", [
    ({"type": "float", "low": 1, "high": 0}, "need numeric low < high"),
    ({"type": "float", "low": 0, "high": 1, "log": True}, "log = true needs low > 0"),
    ({"type": "int", "low": 1, "high": 4, "when": {"nope": [1]}}, "'nope' is not a parameter"),
    ({"type": "categorical", "choices": []}, "choices must be a non-empty list"),
    ({"type": "uniform", "low": 0, "high": 1}, "allowed: int, float, categorical"),
    ({"type": "int", "low": 1, "high": 4, "scale": 2}, "unknown field"),
])
def test_space_errors_name_the_parameter(entry, needle):
    with pytest.raises(ConfigError, match=needle):
        SearchSpace.from_dict({"p": entry})


def test_study_file_errors(tmp_path):
    from search.config import Study

    path = write_study(tmp_path, extra_study='objectives = ["accuracy", "epsilon"]\n'
                       'pruner_x = 1')
    with pytest.raises(ConfigError, match="pruner_x"):
        Study(path)
    path = write_study(tmp_path, pruner="median",
                       extra_study='objectives = ["accuracy", "client_compute"]')
    with pytest.raises(ConfigError, match="pruner must be 'none' for multi-objective"):
        Study(path)


# -- Optuna ---------------------------------------------------------------------------------
def test_optuna_study_prunes_by_round_and_writes_a_report(tmp_path):
    from search import run_search

    path = write_study(tmp_path, n_trials=8, pruner="median", rounds=6, sampler="random")
    out = run_search(path)
    trials = read_trials(out)
    assert len(trials) == 8
    states = {t["state"] for t in trials}
    assert "PRUNED" in states and "COMPLETE" in states
    for t in trials:
        if t["state"] == "PRUNED":
            assert int(t["rounds_completed"]) < 6
            assert Path(t["run_dir"]).name.endswith(".pruned")
    for name in ("best_config.toml", "best_model/weights.npz", "history.png", "summary.json",
                 "study.db"):
        assert (out / name).is_file(), name
    import sandbox

    best = sandbox.load_config(out / "best_config.toml")  # re-runnable plain config
    summary = json.loads((out / "summary.json").read_text())
    assert best.train.lr == pytest.approx(summary["best"]["params"]["lr"])
    assert_selected_on_validation(out)


def test_failing_trials_are_recorded_with_reason_and_the_study_goes_on(tmp_path):
    from search import run_search

    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 200)
    np.savez(tmp_path / "clean.npz", x=x, y=y)
    np.savez(tmp_path / "huge.npz", x=x * 1e37, y=y)  # overflows: the run diverges
    x[5, 2] = np.nan  # rejected when the data are loaded, before the run starts
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    files = [str(tmp_path / f"{name}.npz") for name in ("clean", "huge", "nan")]
    extra_space = ('[space.file]\ntype = "categorical"\n'
                   f'choices = {json.dumps(files)}\n'
                   'key = "data.path"\n'
                   '[space.batch]\ntype = "categorical"\nchoices = [16, 0]\n'
                   'key = "train.batch_size"\n')
    path = write_study(tmp_path, n_trials=12, sampler="random",
                       extra_experiment='data.dataset = "npz"\ndata.partitioner = "iid"\n'
                       f'data.path = "{tmp_path / "clean.npz"}"',
                       extra_space=extra_space)
    out = run_search(path)
    trials = read_trials(out)
    assert len(trials) == 12
    reasons = [t["fail_reason"] for t in trials if t["state"] == "FAIL"]
    assert any("train.batch_size" in r for r in reasons)  # bad config, named key
    assert any("non-finite centralized loss" in r for r in reasons)  # diverged
    assert any("x has non-finite values" in r for r in reasons)  # NaN input, named file
    assert any(t["state"] == "COMPLETE" for t in trials)


def _search_cmd(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sandbox", "search", str(path), *extra]


def test_sigkill_and_resume_loses_no_trial_and_matches_uninterrupted(tmp_path):
    import optuna

    reference = write_study(tmp_path / "a", name="same", n_trials=12, pruner="hyperband",
                            rounds=4) if (tmp_path / "a").mkdir() is None else None
    killed = write_study(tmp_path / "b", name="same", n_trials=12, pruner="hyperband",
                         rounds=4) if (tmp_path / "b").mkdir() is None else None
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    subprocess.run(_search_cmd(reference), check=True, env=env, capture_output=True, cwd=ROOT)
    log = tmp_path / "killed.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(_search_cmd(killed), stdout=handle, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT)
        deadline = time.time() + 300
        while log.read_text().count("\ntrial ") + log.read_text().startswith("trial ") < 4:
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    url = f"sqlite:///{tmp_path / 'b' / 'out' / 'same' / 'study.db'}"
    before = optuna.load_study(study_name="same", storage=url).get_trials()
    finished_before = {t.number: t.params for t in before if t.state.is_finished()}
    resumed = subprocess.run(_search_cmd(killed, "--resume"), env=env, capture_output=True,
                             text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = optuna.load_study(study_name="same", storage=url).get_trials()
    for number, params in finished_before.items():  # nothing finished was lost
        assert after[number].params == params and after[number].state.is_finished()
    assert not [t for t in after if t.state.name == "RUNNING"]
    interrupted = set(optuna.load_study(study_name="same", storage=url).user_attrs.get(
        "interrupted_trials", []))
    counted = sorted((t for t in after if t.number not in interrupted),
                     key=lambda t: t.user_attrs["slot"])
    assert [t.user_attrs["slot"] for t in counted] == list(range(12))
    straight = optuna.load_study(
        study_name="same", storage=f"sqlite:///{tmp_path / 'a' / 'out' / 'same' / 'study.db'}")
    # Same proposals and same pruning decisions, slot by slot.
    assert [(t.params, t.state, t.last_step) for t in counted] == [
        (t.params, t.state, t.last_step) for t in straight.get_trials()]
    rows = read_trials(tmp_path / "b" / "out" / "same")
    assert {int(r["number"]) for r in rows if r["fail_reason"] == "interrupted"} == interrupted
    ref = json.loads((tmp_path / "a" / "out" / "same" / "summary.json").read_text())
    res = json.loads((tmp_path / "b" / "out" / "same" / "summary.json").read_text())
    assert res["best"]["values"] == ref["best"]["values"]
    assert res["best"]["params"] == ref["best"]["params"]


@pytest.mark.parametrize("sampler", ["cmaes", "gp"])
def test_other_samplers_run(tmp_path, sampler):
    import optuna

    from search import run_search
    from search.config import Study
    from search.optuna_backend import make_sampler

    path = write_study(tmp_path, n_trials=4, sampler=sampler, rounds=2)
    expected = {"cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler}
    assert type(make_sampler(Study(path), seed=1)) is expected[sampler]  # no silent fallback
    trials = read_trials(run_search(path))
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4
    assert len({t["lr"] for t in trials}) == 4


def test_pareto_study_with_epsilon_constraint_and_privacy_cost(tmp_path):
    """NSGA-II with a seeded Poisson trial count: ε composed, caveats shown, and no
    random-stopping bound (an adaptive sampler, a seed-known K, every trial released)."""
    import optuna

    from search import run_search

    path = write_study(
        tmp_path, n_trials=6, sampler="nsga2", rounds=2,
        extra_study='objectives = ["accuracy", "epsilon", "client_compute"]\n'
                    'epsilon_max = 30.0\ntrial_distribution = "poisson"',
        extra_experiment='privacy.sample.enabled = true\nprivacy.noise = "seeded"',
        extra_space='[space.noise]\ntype = "float"\nlow = 0.6\nhigh = 3.0\n'
                    'key = "privacy.sample.noise_multiplier"')
    out = run_search(path)
    assert (out / "pareto.png").is_file()
    privacy = json.loads((out / "privacy.json").read_text())
    trials = read_trials(out)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert study.user_attrs["n_trials_drawn"] == len(trials)  # K ~ Poisson(6), from the seed
    assert study.user_attrs["n_trials_source"] == "seeded"
    assert privacy["dp"] and privacy["trials_with_dp"] == len(trials)
    assert privacy["epsilon_composed"] < privacy["epsilon_naive_sum"]
    stopping = privacy["random_stopping"]
    assert not stopping["applies"]
    for needle in ("sampler 'nsga2' adapts", "drawn from the study seed",
                   "study.release = 'all'", "privacy.sample.noise_multiplier",
                   "not an upper bound (seeded noise"):
        assert needle in stopping["why"], needle
    assert "Random-stopping bound not reported" in (out / "report.md").read_text()
    # seeded noise: no ε of this study is an upper bound, and every place says so
    assert not privacy["upper_bound"] and "seeded noise" in privacy["caveats"][0]
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    assert complete and all(float(t["epsilon"]) > 0 for t in complete)
    assert all(t["epsilon_upper_bound"] == "False" and "privacy.noise = 'seeded'"
               in t["epsilon_caveats"] for t in complete)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["epsilon_upper_bound"] is False
    assert summary["best"]["epsilon_caveats"] and not summary["privacy"]["upper_bound"]
    report = (out / "report.md").read_text()
    assert "(not an upper bound)" in report and "These ε are not upper bounds" in report


def test_study_privacy_budget_stops_the_search(tmp_path):
    from search import run_search

    path = write_study(tmp_path, n_trials=10, sampler="random", rounds=3,
                       extra_study="privacy_budget = 15.0",
                       extra_experiment="privacy.sample.enabled = true")
    out = run_search(path)
    summary = json.loads((out / "summary.json").read_text())
    assert "privacy budget" in summary["stop_reason"]
    assert sum(summary["states"].values()) < 10
    trials = read_trials(out)
    assert "stopped after round" in trials[-1]["reason"]  # the last trial stopped mid-run
    privacy = json.loads((out / "privacy.json").read_text())
    assert 12.0 < privacy["epsilon_composed"] <= 15.0  # spent up to, never past, the budget


def test_optuna_dashboard_reads_our_storage(tmp_path):
    from optuna_dashboard import wsgi

    from search import run_search

    out = run_search(write_study(tmp_path, n_trials=2, sampler="random", rounds=2))
    from wsgiref.util import setup_testing_defaults

    app = wsgi(f"sqlite:///{out / 'study.db'}")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/api/studies"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), body[:2000]
    assert json.loads(body)["study_summaries"][0]["study_name"] == "s"


# -- KerasTuner ---------------------------------------------------------------------------
def _assert_promoted_trials_continue_their_run(trials: list[dict]) -> None:
    """Reproducer: a promoted configuration continues its rung's run from the checkpoint,
    is charged its earlier rounds once, and is COMPLETE once (rungs are PRUNED)."""
    from search.trials import spent_ledgers

    assert {int(t["rounds_completed"]) for t in trials} == {1, 3}
    assert {t["state"] for t in trials} == {"PRUNED", "COMPLETE"}
    complete = [(t["lr"], t["width"]) for t in trials if t["state"] == "COMPLETE"]
    assert len(complete) == len(set(complete))  # no configuration stored twice as complete
    by_dir = {t["run_dir"]: t for t in trials}
    continued = [t for t in trials if t["continued_run"]]
    assert continued
    for t in continued:
        rung = by_dir[t["continued_run"]]
        assert (rung["state"], rung["lr"], rung["width"]) == ("PRUNED", t["lr"], t["width"])
        rows = json.loads((Path(t["run_dir"]) / "metrics.json").read_text())
        before = json.loads((Path(rung["run_dir"]) / "metrics.json").read_text())
        assert rows[:2] == before  # rounds 0-1 restored, not trained again
        ran = rows[2:]  # only the rounds it ran: who trained and who evaluated
        assert len(ran) == 2 and float(t["client_rounds"]) == sum(
            len(r["train_partitions"]) + len(r["fed_val_partitions"]) for r in ran)
    ledgers = spent_ledgers(dict(t) for t in trials)
    charged = sum(1 for led in ledgers for m in led.mechanisms if m.scope == "client-0")
    # each round once: 4 clients train and 4 evaluate in every round a trial ran
    assert charged == sum(float(t["client_rounds"]) for t in trials) / 8


@pytest.mark.parametrize("oracle", ["random", "hyperband"])
def test_kerastuner_backend_runs_federated_trials(tmp_path, oracle):
    import optuna

    from search import run_search

    path = write_study(tmp_path, n_trials=3, rounds=3, sampler=None, pruner=None,
                       extra_study=f'backend = "kerastuner"\noracle = "{oracle}"\n'
                                   "max_rounds = 3",
                       extra_experiment="privacy.sample.enabled = true"
                       if oracle == "hyperband" else "")
    out = run_search(path)
    trials = read_trials(out)
    if oracle == "hyperband":  # Hyperband's epochs are federated rounds
        _assert_promoted_trials_continue_their_run(trials)
    else:
        assert len(trials) == 3 and all(t["state"] == "COMPLETE" for t in trials)
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == len(trials)
    assert (out / "best_config.toml").is_file()
    assert_selected_on_validation(out)
