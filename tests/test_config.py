from __future__ import annotations

import subprocess
import sys

import pytest

from sandbox import ConfigError, load_config
from sandbox.core.config import Config
from sandbox.core.tomlio import dict_to_toml
from sandbox.engine.preflight import validate_config
from tests.conftest import ROOT

QUICKSTART = ROOT / "configs" / "quickstart.toml"


def error_of(overrides, path=QUICKSTART) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_defaults_validate():
    cfg = load_config()
    assert cfg.framework == "torch" and cfg.backend == "inline"


def test_quickstart_loads_with_typed_overrides():
    cfg = load_config(QUICKSTART, ["framework=keras", "rounds=30", "model.hidden=[8, 8]"])
    assert cfg.framework == "keras" and cfg.rounds == 30 and cfg.model.hidden == [8, 8]


@pytest.mark.parametrize(
    ("override", "must_mention"),
    [
        ({"data.alfa": 0.1}, ["data.alfa", "unknown key", "alpha"]),
        ({"bogus": 1}, ["bogus", "top level", "framework"]),
        ({"rounds": "many"}, ["rounds", "valid integer", "'many'"]),
        ({"rounds": 2.5}, ["rounds", "valid integer"]),
        ({"rounds": 0}, ["rounds", "greater than or equal to 1"]),
        ({"data.alpha": -1.0}, ["data.alpha", "greater than 0"]),
        ({"train.lr": float("nan")}, ["train.lr"]),
        ({"data.dataset": "cifar"}, ["data.dataset", "'digits'", "'mnist1d'", "'cifar'"]),
        ({"model.arch": "resnet"}, ["model.arch", "'mlp'", "'cnn'"]),
        ({"framework": "jax"}, ["framework", "'torch'", "'keras'"]),
        ({"backend": "grpc"}, ["backend", "'inline'", "'ray'"]),
        ({"federation.strategy": "fedfoo"}, ["federation.strategy", "fedfoo", "fedavg"]),
        ({"train.local_steps": 5}, ["local_epochs", "local_steps"]),
        ({"data.partitioner": "natural"}, ["natural", "synthetic"]),
        ({"data.dataset": "npz"}, ["data.path", "npz"]),
        ({"data.test_fraction": 0.2}, ["data.test_fraction", "renamed to",
                                       "data.client_validation_fraction"]),
        ({"data.validation_fraction": 0.0}, ["data.validation_fraction", "greater than 0"]),
        ({"privacy.noise": "yes"}, ["privacy.noise", "'secure'", "'seeded'"]),
        ({"privacy.secure_rng": True}, ["privacy.secure_rng", "renamed to", "privacy.noise"]),
    ],
)
def test_bad_values_name_key_and_allowed(override, must_mention):
    message = error_of(override)
    for fragment in must_mention:
        assert fragment in message, (fragment, message)


def test_several_errors_reported_together():
    message = error_of({"rounds": 0, "data.alpha": 0.0})
    assert "rounds" in message and "data.alpha" in message


def test_bad_override_syntax():
    assert "key=value" in error_of(["rounds"])
    assert "is a value, not a section" in error_of(["rounds.x=1"])


def test_missing_and_malformed_files(tmp_path):
    assert "not found" in error_of({}, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    assert "invalid TOML" in error_of({}, bad)


def test_resolved_toml_round_trips():
    cfg = load_config(QUICKSTART, {"federation.strategy": "fedavgm",
                                   "federation.strategy_args": {"server_momentum": 0.5},
                                   "train.local_steps": 7, "train.local_epochs": None})
    import tomllib

    again = validate_config(tomllib.loads(cfg.to_toml()))
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert dict_to_toml({"a": 1, "b": {"c": [1, 2]}}) == "a = 1\n\n[b]\nc = [1, 2]\n"


def test_hash_ignores_output_but_not_computation():
    a = load_config(QUICKSTART)
    assert a.config_hash() == load_config(QUICKSTART, {"output.dir": "elsewhere"}).config_hash()
    assert a.config_hash() != load_config(QUICKSTART, {"seed": 1}).config_hash()


def test_config_is_immutable():
    cfg = Config()
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        cfg.rounds = 3  # type: ignore[misc]


def test_cli_error_is_one_clear_message_and_writes_nothing(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", str(QUICKSTART), "--set", "data.alfa=0.1",
         "--set", f"output.dir={out}"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "data.alfa" in proc.stderr and "allowed keys" in proc.stderr
    assert not out.exists()


def test_cli_data_error_writes_nothing(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", str(QUICKSTART), "--set", "data.dataset='npz'",
         "--set", f"data.path='{tmp_path / 'missing.npz'}'", "--set", f"output.dir={out}"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "data.path" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_validates_and_builds(path):
    from sandbox.engine.preflight import preflight

    text = path.read_text()
    if "[study]" in text:
        import optuna

        from search.config import Study

        study = Study(path)
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        configs = [study.base, study.trial_config(study.space.suggest_optuna(trial))]
    elif "[sweep]" in text:
        from sandbox.engine.sweep import load_sweep

        configs = [cfg for _, cfg in load_sweep(path)[1]]
    else:
        configs = [load_config(path)]
    for cfg in configs:
        prepared = preflight(cfg)
        assert len(prepared.data.clients) == cfg.data.num_clients


def test_sweep_expands_grid_and_baselines(tmp_path):
    from sandbox.engine.sweep import load_sweep

    _, runs = load_sweep(ROOT / "configs" / "dp_sweep.toml")
    assert len(runs) == 2 * 6 + 2
    baselines = [cfg for combo, cfg in runs if combo.get("baseline")]
    assert {c.framework for c in baselines} == {"torch", "keras"}
    assert not any(c.privacy.any_dp for c in baselines)
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\n"privacy.sample.noise_multiplier" = [1.0, -1.0]\n')
    with pytest.raises(ConfigError, match="noise_multiplier"):
        load_sweep(bad)
    bad.write_text('rounds = 3\n')
    with pytest.raises(ConfigError, match=r"\[sweep\] table"):
        load_sweep(bad)


def test_sweep_preflights_every_combination_before_writing(tmp_path):
    """A combination whose DP calibration cannot be met stops the sweep before run 1."""
    from sandbox.engine.sweep import run_sweep

    out = tmp_path / "out"
    path = tmp_path / "sweep.toml"
    path.write_text(f'rounds = 1\n[data]\nnum_clients = 3\n[model]\narch = "mlp"\n'
                    f'[output]\ndir = "{out}"\n[privacy.sample]\nenabled = true\n'
                    f'[sweep]\n"privacy.sample.target_epsilon" = [5.0, 1e-6]\n')
    with pytest.raises(ConfigError, match=r"combination privacy.sample.target_epsilon=1e-06: "
                                          r".*cannot be met"):
        run_sweep(path, quiet=True)
    assert not out.exists()


@pytest.mark.parametrize(("name", "hint"), [("dp_sweep", "fedsandbox sweep"),
                                            ("search_digits", "fedsandbox search")])
def test_sweep_and_study_files_given_to_run_say_which_command(name, hint):
    with pytest.raises(ConfigError, match=hint):
        load_config(ROOT / "configs" / f"{name}.toml")


def _leaf_keys(model, prefix=""):
    """(section, key) of every setting of a pydantic model, nested sections expanded."""
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            yield prefix.rstrip("."), name


def test_every_config_key_is_documented():
    """configs/README.md has a row for every key of every section of the schema."""
    from sandbox.core.config import Config

    docs = (ROOT / "configs" / "README.md").read_text()
    sections = {}
    for block in docs.split("\n## ")[1:] + docs.split("\n### ")[1:]:
        header, _, body = block.partition("\n")
        name = header.split("`")[1] if "`" in header else ""
        sections[name.strip("[]")] = body.split("\n## ")[0].split("\n### ")[0]
    sections[""] = sections.get("", docs.split("\n## ")[1])
    missing = [f"{section}.{key}".lstrip(".") for section, key in _leaf_keys(Config)
               if f"`{key}`" not in _first_cells(sections.get(section, ""))]
    assert not missing, f"configs/README.md documents no row for {missing}"


def _first_cells(table: str) -> str:
    """The key column of a markdown table (rows may document two keys together)."""
    return "\n".join(line.split("|")[1] for line in table.splitlines()
                     if line.startswith("| `"))
