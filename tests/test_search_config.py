"""Study files and overrides, the trained-best rule, and the (noised) federated objective."""

from __future__ import annotations

import json
import math

import pytest

from sandbox import ConfigError
from tests.test_search import read_trials, write_study


@pytest.mark.parametrize("overrides,needle", [
    ({"study.prunr": "x"}, r"study.prunr: unknown key 'prunr' in \[study\]; allowed keys: name"),
    ({"experiment.roundz": 3},
     r"experiment.roundz: unknown key 'roundz' in \[experiment\]; allowed keys: name, seed"),
    ({"experiment.data.alhpa": 3}, r"unknown key 'alhpa' in \[experiment.data\]"),
    ({"space.lrr.high": 0.3}, r"no parameter 'lrr' in \[space\]; parameters: lr, width"),
    ({"space.lr.scale": 2}, r"space.lr: unknown field\(s\) \['scale'\]"),
    ({"data.alpha": 3}, "search overrides name their table"),
    ({"study.eval_noise_multiplier": 1.0}, "set study.eval_fraction > 0"),
    ({"study.workers": 2, "study.privacy_budget": 5.0}, "privacy_budget needs workers = 1"),
])
def test_errors_name_the_section_the_user_wrote_in(tmp_path, overrides, needle):
    from search.config import Study

    with pytest.raises(ConfigError, match=needle) as caught:
        Study(write_study(tmp_path), overrides)
    if "study.prunr" in overrides:  # the [study] keys, not the experiment's
        assert "framework" not in str(caught.value) and "n_trials" in str(caught.value)


def test_overrides_reach_experiment_and_space_and_dry_run_writes_nothing(tmp_path):
    from search import dry_run
    from search.config import Study

    overrides = {"experiment.rounds": 5, "space.lr.high": 0.3, "study.n_trials": 7,
                 "seed": 2}
    study = Study(write_study(tmp_path), overrides)
    assert study.base.rounds == 5 and study.space.by_name["lr"].high == 0.3
    assert (study.settings.n_trials, study.settings.seed) == (7, 2)
    assert study.command.endswith("--set experiment.rounds=5 --set space.lr.high=0.3 "
                                  "--set study.n_trials=7 --set study.seed=2")
    text = dry_run(write_study(tmp_path), overrides)
    for needle in ("[study]", "n_trials = 7", "[space.lr]", "high = 0.3", "[experiment]",
                   "rounds = 5", "nothing was run"):
        assert needle in text, needle
    assert not (tmp_path / "out").exists()


def test_a_trial_that_completed_no_round_is_failed_with_its_budget_reason():
    from sandbox.core.results import StopReason
    from search.objective import TrialOutcome

    stopped = TrialOutcome(StopReason.BUDGET, accuracy=0.1, rounds_completed=0,
                           reason="privacy budget: stopped before round 1")
    assert stopped.status == "failed"
    attrs = stopped.attributes()
    assert attrs["budget_stop"] and attrs["budget_reason"].startswith("privacy budget")
    assert attrs["fail_reason"] == attrs["budget_reason"]
    assert TrialOutcome(StopReason.BUDGET, rounds_completed=2).status == "complete"


def _evaluation_cfg(tmp_path, **extra):
    from search.config import Study

    study = Study(write_study(tmp_path), {"eval_fraction": 0.5, **extra})
    return study, study.trial_config({"lr": 0.1, "width": 16})


def test_noised_federated_score_is_seeded_and_charged_per_evaluated_client(tmp_path):
    from search.evaluation import Evaluation

    study, cfg = _evaluation_cfg(tmp_path, eval_noise_multiplier=1.0)
    assert cfg.federation.fraction_evaluate == 0.5
    row = {"central_val_accuracy": 0.9, "fed_val_accuracy": 0.6}
    plain = Evaluation(0.5).for_trial(cfg).score(1, row)
    assert plain == 0.6 and Evaluation().for_trial(cfg).score(1, row) == 0.9
    scores, ledgers = [], []
    for _ in range(2):
        scorer = Evaluation(0.5, 1.0, seed=4).for_trial(cfg, source="t")
        scores.append([scorer.score(r, row) for r in (1, 2)])
        ledgers.append(scorer.ledger)
    assert scores[0] == scores[1] and scores[0][0] != 0.6 and scores[0][0] != scores[0][1]
    evaluated = scorer.evaluated_partitions(1, row)
    assert len(evaluated) == 2  # half of the 4 clients
    assert {m.scope for m in ledgers[0].mechanisms if m.round == 1} == {
        f"client-{p}" for p in evaluated}
    assert all(m.entry == (1.0, 1.0, 1) for m in ledgers[0].mechanisms)
    reserved = Evaluation(0.5, 1.0).reserve(cfg)
    assert len(reserved.mechanisms) == cfg.rounds * cfg.data.num_clients
    assert math.isnan(Evaluation(0.5).for_trial(cfg).score(1, {"fed_val_accuracy": None}))


def test_a_study_on_noised_federated_validation_charges_its_epsilon(tmp_path):
    from search import run_search

    path = write_study(tmp_path, n_trials=2, sampler="random", rounds=2,
                       extra_study="eval_fraction = 0.5\neval_noise_multiplier = 2.0")
    out = run_search(path)
    trials = read_trials(out)
    assert all(t["state"] == "COMPLETE" and float(t["eval_epsilon"]) > 0 for t in trials)
    assert any(t["accuracy"] != t["central_val_accuracy"] for t in trials)
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy["dp"] and privacy["noised_evaluation"]["releases"] == 2 * 2 * 2
    assert privacy["epsilon_composed"] >= max(float(t["eval_epsilon"]) for t in trials)
    assert "federated validation on 50%" in (out / "report.md").read_text()
