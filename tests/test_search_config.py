"""Study files and overrides, the trained-best rule, and the (noised) federated objective."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sandbox import ConfigError
from tests.test_search import read_trials, write_study

SQRT2 = math.sqrt(2.0)  # L2 norm of (1, 1): the sensitivity every release must keep


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


def engine_row(clients: list[tuple[int, int]], *, weighted: bool) -> dict:
    """A round row as the engine aggregates (correct, examples) of the evaluated clients:
    weighted by examples (Flower's weighted mean), or every client once (unit weights)."""
    accuracies = [c / n for c, n in clients]
    accuracy = (sum(c for c, _ in clients) / sum(n for _, n in clients) if weighted
                else sum(accuracies) / len(clients))
    return {"central_val_accuracy": 0.9, "fed_val_accuracy": accuracy,
            "fed_val_partitions": list(range(len(clients))),
            "fed_val_examples": sum(n for _, n in clients), "fed_val_weighted": weighted}


def neighbours(clients: list[tuple[int, int]], *, client_level: bool):
    """Every data set one example (or, at client level, one whole client) away."""
    for i, (c, n) in enumerate(clients):
        changed = [(c + 1, n + 1), (c, n + 1)] + ([(c - 1, n - 1)] if c and n > 1 else [])
        changed += [(c, n - 1)] if n - c and n > 1 else []
        for moved in changed:
            yield clients[:i] + [moved] + clients[i + 1:]
        if client_level and len(clients) > 1:
            yield clients[:i] + clients[i + 1:]


def test_client_level_evaluation_releases_a_count_of_clients_within_its_sensitivity(tmp_path):
    """Reproducer: under client-level DP the engine averages clients with unit weights;
    rebuilding 'correct predictions' as accuracy × Σn moves by far more than √2 when one
    example moves. The release is (Σ accuracies, clients), charged to the federation."""
    import numpy as np

    from search.evaluation import Evaluation

    _, cfg = _evaluation_cfg(tmp_path, eval_noise_multiplier=1.0)
    scorer = Evaluation(0.5, 1.0, seed=4).for_trial(cfg, source="t")
    clients = [(5, 10), (50, 100)]
    row = engine_row(clients, weighted=False)
    scorer.score(1, row)  # a client-level release: the federation scope pays
    assert {m.scope for m in scorer.ledger.mechanisms} == {"federation"}
    assert all(m.entry == (1.0, 1.0, 1) for m in scorer.ledger.mechanisms)
    moved = engine_row([(6, 11), (50, 100)], weighted=False)  # one example added
    old = [np.array([r["fed_val_accuracy"] * r["fed_val_examples"], r["fed_val_examples"]])
           for r in (row, moved)]
    assert np.linalg.norm(old[0] - old[1]) > 3.0 > SQRT2  # the old bound is exceeded
    for neighbour in neighbours(clients, client_level=True):
        distance = np.linalg.norm(scorer.release(row).values
                                  - scorer.release(engine_row(neighbour, weighted=False)).values)
        assert distance <= SQRT2 + 1e-12, neighbour
    from search.evaluation import SENSITIVITY  # the √2 the noise is calibrated to

    assert SENSITIVITY == SQRT2


def test_weighted_evaluation_releases_exact_counts_charged_to_the_evaluated_clients(tmp_path):
    import numpy as np

    from search.evaluation import Evaluation

    _, cfg = _evaluation_cfg(tmp_path, eval_noise_multiplier=1.0)
    scorer = Evaluation(0.5, 1.0, seed=4).for_trial(cfg, source="t")
    clients = [(7, 13), (40, 91), (0, 5)]
    row = engine_row(clients, weighted=True) | {"fed_val_partitions": [1, 2, 3]}
    scorer.score(2, row)  # the row's partitions pay, not a re-drawn sample
    assert {m.scope for m in scorer.ledger.mechanisms} == {"client-1", "client-2", "client-3"}
    assert scorer.release(row).values.tolist() == [47.0, 109.0]
    for neighbour in neighbours(clients, client_level=False):
        distance = np.linalg.norm(scorer.release(row).values
                                  - scorer.release(engine_row(neighbour, weighted=True)).values)
        assert distance <= SQRT2 + 1e-12, neighbour


def test_noised_score_is_secure_by_default_and_reproducible_only_when_seeded(tmp_path):
    from search.evaluation import Evaluation

    row = engine_row([(30, 60), (20, 50)], weighted=True)
    for noise, equal in (("secure", False), ("seeded", True)):
        _, cfg = _evaluation_cfg(tmp_path, eval_noise_multiplier=1.0,
                                 **{"experiment.privacy.noise": noise})
        scores = [[Evaluation(0.5, 1.0, seed=4).for_trial(cfg).score(r, row) for r in (1, 2)]
                  for _ in range(2)]
        assert (scores[0] == scores[1]) is equal, noise
        assert scores[0][0] != row["fed_val_accuracy"] and scores[0][0] != scores[0][1]
    _, cfg = _evaluation_cfg(tmp_path)
    assert Evaluation(0.5).for_trial(cfg).score(1, row) == row["fed_val_accuracy"]
    assert Evaluation().for_trial(cfg).score(1, row) == 0.9
    assert math.isnan(Evaluation(0.5).for_trial(cfg).score(1, {"fed_val_accuracy": None}))
    reserved = Evaluation(0.5, 1.0).reserve(cfg)  # every round, every client, both units
    assert len(reserved.mechanisms) == cfg.rounds * (cfg.data.num_clients + 1)


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
    evaluation = privacy["evaluation"]  # what the evaluation ε rests on
    assert "OS CSPRNG" in evaluation["noise_source"]
    assert "exact fed_val_accuracy" in evaluation["exact_values_kept"]
    report = (out / "report.md").read_text()
    assert "federated validation on 50%" in report and "exact fed_val_accuracy" in report
    for t in trials:  # the tuner saw what the rows say: 2 of 4 clients evaluated per round
        rows = json.loads((Path(t["run_dir"]) / "metrics.json").read_text())[1:]
        assert all(len(r["fed_val_partitions"]) == 2 and r["fed_val_weighted"] for r in rows)
        # client-rounds count who trained and who evaluated
        assert float(t["client_rounds"]) == sum(
            len(r["train_partitions"]) + len(r["fed_val_partitions"]) for r in rows)
    # each trial evaluates its own subsample (Kuo et al. 2023), not the same clients
    samples = [[r["fed_val_partitions"] for r in json.loads(
        (Path(t["run_dir"]) / "metrics.json").read_text())[1:]] for t in trials]
    assert samples[0] != samples[1]


def test_client_round_budget_counts_evaluation_and_is_never_overrun(tmp_path):
    """Budget 27 with 4 clients training and 2 evaluating per round (6 per round): the
    first trial spends 18, the second stops after one round (another could pass 27)."""
    from search import run_search

    path = write_study(tmp_path, n_trials=10, sampler="random", rounds=3,
                       extra_study="eval_fraction = 0.5\nclient_round_budget = 27")
    out = run_search(path)
    trials = read_trials(out)
    spent = sum(float(t["client_rounds"]) for t in trials)
    assert [float(t["client_rounds"]) for t in trials] == [18, 6] and spent <= 27
    assert any(t["state"] == "PRUNED" for t in trials)  # the one stopped by the budget


@pytest.mark.parametrize("client_dp", [False, True])
def test_round_rows_say_who_trained_who_evaluated_and_how_it_was_weighted(small, client_dp):
    """The rows the search reads: partitions from the strategy's own records, examples
    from the evaluate replies, unit weights under client-level DP."""
    import sandbox
    from sandbox.core.experiment import load_experiment_data

    dp = {"privacy.client.mode": "server_fixed", "privacy.client.noise_multiplier": 0.1,
          "privacy.client.clipping_norm": 5.0} if client_dp else {}
    cfg = small(rounds=2, **{"federation.fraction_train": 0.5,
                             "federation.fraction_evaluate": 0.5, **dp})
    run_dir = sandbox.run(cfg).run_dir
    rows = json.loads((run_dir / "metrics.json").read_text())
    taken = json.loads((run_dir / "participation.json").read_text())
    sizes = [len(c.y_val) for c in load_experiment_data(cfg).clients]
    assert rows[0]["fed_val_partitions"] is None
    for row in rows[1:]:
        assert row["train_partitions"] == taken[str(row["round"])]["train"]
        assert row["fed_val_partitions"] == taken[str(row["round"])]["evaluate"]
        assert len(row["fed_val_partitions"]) == 2
        assert row["fed_val_examples"] == sum(sizes[p] for p in row["fed_val_partitions"])
        assert row["fed_val_weighted"] is not client_dp
