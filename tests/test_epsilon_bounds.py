"""Every ε says whether it is an upper bound: seeded noise and shuffled batches are flagged
in run.json, privacy.json, the console summary, sweep rows, ``fedsandbox ls`` and every
ledger composition that includes such a run (``PrivacyLedger.caveats``)."""

from __future__ import annotations

import csv
import json

import pytest

from sandbox.cli import main
from sandbox.core.privacy import Mechanism, PrivacyLedger
from sandbox.engine.listing import format_listing, list_results
from tests.conftest import ROOT, small_overrides

QUICKSTART = ROOT / "configs" / "quickstart.toml"
FAST = {"rounds": 1, "data.num_clients": 2, "train.batch_size": 16, "train.local_epochs": 1,
        "federation.fraction_evaluate": 0.0, "output.plot": False,
        "output.tensorboard": False, "privacy.sample.enabled": True}
#: case: (overrides, a fragment of the caveat; None: ε is an upper bound)
CASES = {
    "secure-poisson": ({}, None),
    "seeded": ({"privacy.noise": "seeded"}, "privacy.noise = 'seeded'"),
    "shuffled": ({"privacy.sample.poisson": False}, "privacy.sample.poisson = false"),
    "seeded-client-dp": ({"privacy.sample.enabled": False, "privacy.noise": "seeded",
                          "privacy.client.mode": "server_fixed"}, "privacy.noise = 'seeded'"),
}


def _cli_run(tmp_path, capsys, overrides: dict) -> tuple[str, object]:
    settings = small_overrides(tmp_path, **{**FAST, **overrides})
    argv = ["run", str(QUICKSTART)]
    for key, value in settings.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    return out, ROOT / out.strip().splitlines()[-1]


@pytest.mark.parametrize("case", sorted(CASES))
def test_run_outputs_say_whether_epsilon_is_an_upper_bound(tmp_path, capsys, case):
    overrides, caveat = CASES[case]
    out, run_dir = _cli_run(tmp_path, capsys, overrides)
    bound = caveat is None
    info = json.loads((run_dir / "run.json").read_text())
    assert info["epsilon"] > 0 and info["epsilon_upper_bound"] is bound
    assert (caveat is None and info["epsilon_caveats"] == []) or any(
        caveat in text for text in info["epsilon_caveats"])
    assert ("not an upper bound" in out) is not bound
    if caveat is not None:
        assert f"ε is not an upper bound: {caveat}" in out
    privacy = json.loads((run_dir / "privacy.json").read_text())
    stated = privacy["assumptions"]
    level = "client_level" if "client-dp" in case else "sample_level"
    assert stated[f"{level}_upper_bound"] is bound
    seeded = overrides.get("privacy.noise") == "seeded"
    assert ("NOT PRIVATE" if seeded else "os.urandom") in stated["noise_source"]
    ledger = privacy["ledger"]
    assert ledger["upper_bound"] is bound and bool(ledger["caveats"]) is not bound
    assert ledger["noise"] == ("seeded" if seeded else "secure")
    assert {m["noise"] for m in ledger["mechanisms"]} == {ledger["noise"]}
    listing = format_listing(list_results(run_dir.parent))
    assert ("*" in listing.splitlines()[1]) is not bound


def test_sweep_rows_say_whether_epsilon_is_an_upper_bound(tmp_path, capsys):
    from sandbox.engine.sweep import run_sweep

    sweep = tmp_path / "sweep.toml"
    sweep.write_text(QUICKSTART.read_text() + '\n[sweep]\n"privacy.noise" = ["secure", '
                     '"seeded"]\n"privacy.sample.poisson" = [true, false]\n')
    path = run_sweep(sweep, small_overrides(tmp_path, **FAST), quiet=True)
    rows = list(csv.DictReader((path / "sweep.csv").open()))
    assert len(rows) == 4
    for row in rows:
        bound = row["privacy.noise"] == "secure" and row["privacy.sample.poisson"] == "True"
        assert row["epsilon_upper_bound"] == str(bound)
        assert ("privacy.noise = 'seeded'" in row["epsilon_caveats"]) is (
            row["privacy.noise"] == "seeded")
        assert ("privacy.sample.poisson = false" in row["epsilon_caveats"]) is (
            row["privacy.sample.poisson"] == "False")
    printed = capsys.readouterr().out
    assert printed.count("(not an upper bound)") == 3
    # The four runs touched the same data: composing them is flagged by the seeded ones.
    ledgers = {row["run_dir"]: PrivacyLedger.from_json(json.loads(
        (path / "runs" / row["run_dir"] / "privacy.json").read_text())["ledger"])
        for row in rows}
    secure = [row["run_dir"] for row in rows if row["epsilon_upper_bound"] == "True"]
    assert PrivacyLedger.compose([ledgers[name] for name in secure]).upper_bound
    composed = PrivacyLedger.compose(ledgers.values(), sources=list(ledgers))
    assert not composed.upper_bound
    assert any("seeded noise" in text and "runs of one seed share it" in text
               for text in composed.caveats)


def _ledger(noise: str, source: str, **kwargs) -> PrivacyLedger:
    ledger = PrivacyLedger(delta=1e-5, data_fingerprint="abc", noise=noise, **kwargs)
    for server_round in (1, 2):
        ledger.add(Mechanism("client-0", "dp-sgd", server_round, 1.1, 0.05, 20, source))
    return ledger


def test_a_composition_including_a_seeded_run_is_not_an_upper_bound():
    secure = [_ledger("secure", f"trial-{i}") for i in range(3)]
    assert PrivacyLedger.compose(secure).upper_bound
    merged = PrivacyLedger.compose([*secure, _ledger("seeded", "trial-3")])
    assert not merged.upper_bound and merged.report()["upper_bound"] is False
    (caveat,) = merged.caveats
    assert "trial-3" in caveat and "trial-0" not in caveat
    assert "runs of one seed share it" in caveat
    saved = json.loads(json.dumps(merged.to_json()))
    assert saved["upper_bound"] is False and saved["caveats"] == merged.caveats
    assert PrivacyLedger.from_json(saved).caveats == merged.caveats
    # Composing again (a study's spent ledger of spent ledgers) keeps the flag.
    assert not PrivacyLedger.compose([PrivacyLedger.from_json(saved), secure[0]]).upper_bound


def test_a_ledger_without_its_noise_source_is_not_an_upper_bound():
    """A ledger written before the source was recorded (seeded was the default then)."""
    legacy = _ledger("secure", "old-run").to_json()
    del legacy["noise"]
    for mechanism in legacy["mechanisms"]:
        del mechanism["noise"]
    merged = PrivacyLedger.compose([PrivacyLedger.from_json(legacy), _ledger("secure", "new")])
    (caveat,) = merged.caveats
    assert "not recorded" in caveat and "old-run" in caveat


def test_shuffled_batches_are_flagged_in_a_composition():
    merged = PrivacyLedger.compose([_ledger("secure", "a", poisson_batches=False),
                                    _ledger("secure", "b")])
    (caveat,) = merged.caveats
    assert "shuffled" in caveat and " a " in f" {caveat} "


def test_ls_marks_runs_whose_epsilon_is_not_a_bound(tmp_path):
    for name, extra in {"bound": {"epsilon_upper_bound": True},
                        "seeded": {"epsilon_upper_bound": False},
                        "old": {}, "no-dp": {"epsilon": None}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(
            {"stop_reason": "finished", "rounds_completed": 1, "final": {},
             "epsilon": 2.5, **extra}))
    lines = format_listing(list_results(tmp_path)).splitlines()
    marked = {line.split()[-1] for line in lines[1:5] if "2.5*" in line}
    assert marked == {"seeded", "old"}
    assert "not an upper bound" in lines[-1]
