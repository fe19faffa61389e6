"""Search on public Optuna APIs only: Hyperband by slot, interrupted trials, fresh samplers."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT


# -- Hyperband, resume and public APIs -------------------------------------------------------
def _hyperband_study(direction: str = "maximize"):
    """A study with 3 brackets (R = 9, eta = 3) and 'skip' as the excluded-trials attr."""
    import optuna

    from search.hyperband import SlotHyperbandPruner

    pruner = SlotHyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3,
                                 exclude_attr="skip")
    return optuna.create_study(direction=direction, pruner=pruner), pruner


def _past_trial(slot: int | None, values: dict[int, float]):
    import optuna

    return optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                     intermediate_values=values,
                                     user_attrs={} if slot is None else {"slot": slot})


def test_hyperband_brackets_follow_the_slot_not_the_number():
    study, pruner = _hyperband_study()
    assert (pruner.n_brackets, pruner.budgets) == (3, [9, 5, 3])  # ceil(3 * 3**s / (s + 1))
    assert [pruner.rungs(b) for b in range(3)] == [[1, 3], [3], []]  # none at R itself
    by_slot = [0] * 9 + [1] * 5 + [2] * 3  # slot mod 17 through the cumulative budgets
    assert [pruner.bracket(_past_trial(k, {})) for k in range(34)] == by_slot * 2
    for slot in (14, 9, 2):  # asked trials 0, 1, 2: the bracket is the slot's
        study.ask().set_user_attr("slot", slot)
    study.ask()  # trial 3 without a slot: its number decides
    assert [pruner.bracket(t) for t in study.get_trials()] == [2, 1, 0, 0]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_hyperband_promotes_the_top_third_of_its_bracket_at_a_rung(direction):
    study, _ = _hyperband_study(direction)
    sign = 1.0 if direction == "maximize" else -1.0
    for slot, value in enumerate([0.1, 0.2, 0.3, 0.4, 0.5]):  # bracket 0, rung 1
        study.add_trial(_past_trial(slot, {1: sign * value}))
    study.add_trial(_past_trial(9, {1: sign * 0.9, 3: sign * 0.9}))  # bracket 1: not a peer
    study.add_trial(_past_trial(5, {1: sign * 0.95}))  # excluded below: not a peer
    study.set_user_attr("skip", [6])

    def asked(slot: int, value: float, step: int = 1):
        trial = study.ask()
        trial.set_user_attr("slot", slot)
        trial.report(sign * value, step)
        return trial

    good = asked(6, 0.45)  # 6 values at rung 1: keep the best 6 // 3 = 2; 0.45 is 2nd
    assert not good.should_prune()
    assert asked(7, 0.35).should_prune()  # 7 values (0.45 running): 0.35 is not in the top 2
    good.report(sign * 0.0, 2)
    assert not good.should_prune()  # no rung at step 2
    good.report(sign * 0.0, 3)
    assert not good.should_prune()  # alone at rung 3 of bracket 0
    assert not asked(10, 0.0).should_prune()  # bracket 1's first rung is step 3
    assert asked(11, 0.0, step=3).should_prune()  # ... where 0.9 leads: 2 values, keep 1
    assert asked(8, float("nan")).should_prune()


def test_recover_interrupted_records_fails_and_enqueues_nothing():
    import optuna

    from search.optuna_backend import recover_interrupted
    from search.study_store import finished_trials, interrupted_trials

    space = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(space), 0.5)
    study.ask(space)  # left RUNNING, as by a killed process
    assert recover_interrupted(study) == [1] and interrupted_trials(study) == {1}
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL"]
    assert [t.number for t in finished_trials(study)] == [0]
    study.ask(space)
    assert recover_interrupted(study) == [2] and interrupted_trials(study) == {1, 2}


def _fresh_search(sampler: str, storage, workers: int = 1, worker: int = 0):
    from types import SimpleNamespace

    import optuna

    from search.optuna_backend import OptunaSearch
    from search.space import SearchSpace

    space = SearchSpace.from_dict({"x": {"type": "float", "low": -3, "high": 3},
                                   "y": {"type": "float", "low": -3, "high": 3}})
    settings = SimpleNamespace(seed=1, sampler=sampler, n_trials=12, workers=workers,
                               directions=["minimize"], backend="optuna",
                               release="all")  # NSGA-II population 4
    study = SimpleNamespace(settings=settings, space=space)
    return OptunaSearch(study, optuna.load_study(study_name="g", storage=storage), storage,
                        worker=worker)


@pytest.mark.parametrize("sampler", ["nsga2", "cmaes", "tpe"])
def test_slot_proposals_keep_generations_and_are_deterministic(sampler):
    """A fresh sampler per slot on the earlier trials; generations stay in the storage."""
    import optuna

    def run() -> list:
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(storage=storage, study_name="g")
        search = _fresh_search(sampler, storage)
        for slot in range(20):
            earlier = search.optuna_study.get_trials()
            fixed, trial, values = search.ask(slot, earlier)
            fixed.tell(trial, (values["x"] - 1) ** 2 + values["y"] ** 2)
        return search.optuna_study.get_trials()

    trials = run()
    if sampler == "nsga2":
        generations = [v for t in trials for k, v in t.system_attrs.items()
                       if k.endswith(":generation")]
        assert max(generations) >= 2
    assert [t.params for t in trials] == [t.params for t in run()]
    assert len({tuple(t.params.values()) for t in trials}) == 20


def test_a_slot_of_a_later_batch_sees_only_earlier_batches_and_never_repeats():
    """Worker 1's proposal for slot 3 (batch 2 of W = 2) ignores slot 2's result."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="g")
    search = _fresh_search("tpe", storage, workers=2, worker=1)
    earlier = []
    for slot in range(2):
        fixed, trial, values = search.ask(slot, earlier)
        fixed.tell(trial, values["x"] ** 2)
    earlier = search.optuna_study.get_trials()
    peer_study, peer, peer_values = search.ask(2, earlier)  # worker 0's slot of batch 2
    before = search.propose(3, earlier)
    peer_study.tell(peer, -100.0)  # a finished peer of the same batch changes nothing
    assert search.propose(3, earlier) == before != peer_values


def _private_accesses(source: str) -> list[str]:
    """``x._name`` with x not self/cls, ``super()._name``, private imports and getattr."""
    import ast

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and private(node.attr) and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
            module = getattr(node, "module", None) or ""
            names = [*module.split("."), *(part for a in node.names
                                           for part in a.name.split("."))]
            if not module.startswith("search") and any(map(private, names)):
                found.append(ast.unparse(node))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "delattr", "hasattr")
              and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
              and private(str(node.args[1].value))):
            found.append(ast.unparse(node))
    return found


def test_search_package_touches_no_private_attribute_of_another_library():
    sample = ("study._storage.get(trial._trial_id)\nsuper()._get_bracket_id(s, t)\n"
              "self._ok = cls._ok + x.__class__\nfrom optuna.storages._cached import C\n"
              "from search.space import _ok\ngetattr(sampler, '_rng')\n")
    assert sorted(_private_accesses(sample)) == sorted([
        "study._storage", "trial._trial_id", "super()._get_bracket_id",
        "from optuna.storages._cached import C", "getattr(sampler, '_rng')"])
    found = {path.name: _private_accesses(path.read_text())
             for path in sorted((ROOT / "search").glob("*.py"))}
    assert len(found) >= 8 and not any(found.values()), found
