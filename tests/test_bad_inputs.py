"""Bad input, as a user would give it: one clear message, exit code 2, nothing written.

Every row runs the CLI in-process (``sandbox.cli.main``) from an empty working directory
with its outputs pointed into the test's temporary directory, and checks: the exit code
is 2, stderr holds no traceback and names what is wrong (the key, file or value), and no
file or directory was created anywhere (no half run directories, no empty studies).
"""

from __future__ import annotations

import numpy as np
import pytest

from sandbox.cli import main
from tests.conftest import ROOT

QUICK = str(ROOT / "configs" / "quickstart.toml")
STUDY = str(ROOT / "configs" / "search_digits.toml")
SWEEP = str(ROOT / "configs" / "dp_sweep.toml")


def run_args(*sets: str) -> list[str]:
    return ["run", QUICK, *(a for s in sets for a in ("--set", s))]


def npz_args(name: str) -> list[str]:
    return run_args("data.dataset=npz", f"data.path={{inp}}/{name}.npz", "model.arch=mlp")


def csv_args(name: str) -> list[str]:
    return run_args("data.dataset=csv", f"data.path={{inp}}/{name}.csv", "model.arch=mlp")


CASES = {
    # -- run configs, from --set ------------------------------------------------------------
    "unknown key": (run_args("data.alfa=0.1"), ["data.alfa", "allowed keys"]),
    "unknown top-level key": (run_args("bogus=1"), ["bogus", "top level"]),
    "text for an int": (run_args("rounds=many"), ["rounds", "'many'"]),
    "float for an int": (run_args("rounds=2.5"), ["rounds", "integer"]),
    "zero rounds": (run_args("rounds=0"), ["rounds", "greater than or equal to 1"]),
    "negative alpha": (run_args("data.alpha=-1.0"), ["data.alpha", "greater than 0"]),
    "nan lr": (run_args("train.lr=nan"), ["train.lr"]),
    "inf lr": (run_args("train.lr=inf"), ["train.lr"]),
    "unknown dataset": (run_args("data.dataset=cifar"), ["data.dataset", "'digits'"]),
    "unknown arch": (run_args("model.arch=resnet"), ["model.arch", "'mlp'"]),
    "unknown framework": (run_args("framework=jax"), ["framework", "'torch'"]),
    "unknown backend": (run_args("backend=grpc"), ["backend", "'inline'"]),
    "unknown strategy": (run_args("federation.strategy=fedfoo"),
                         ["federation.strategy", "fedfoo", "fedavg"]),
    "epochs and steps": (run_args("train.local_epochs=1", "train.local_steps=5"),
                         ["local_epochs", "local_steps"]),
    "natural without synthetic": (run_args("data.partitioner=natural"), ["natural"]),
    "npz without path": (run_args("data.dataset=npz"), ["data.path"]),
    "renamed key": (run_args("data.test_fraction=0.2"), ["data.client_validation_fraction"]),
    "no validation set": (run_args("data.validation_fraction=0"),
                          ["data.validation_fraction"]),
    "validation is everything": (run_args("data.validation_fraction=1"),
                                 ["data.validation_fraction"]),
    "unknown noise source": (run_args("privacy.noise=yes"),
                             ["privacy.noise", "'secure'", "'seeded'"]),
    "renamed secure_rng": (run_args("privacy.secure_rng=true"),
                           ["privacy.secure_rng", "privacy.noise"]),
    "zero threads": (run_args("runtime.threads_per_client=0"),
                     ["runtime.threads_per_client"]),
    "keras inline with two thread counts": (
        run_args("framework=keras", "runtime.server_threads=2"),
        ["runtime.server_threads", "runtime.threads_per_client", "backend = 'ray'"]),
    "unknown torch mode": (run_args("runtime.torch_mode=jit"),
                           ["runtime.torch_mode", "'eager'", "'compile'"]),
    "unknown keras mode": (run_args("framework=keras", "runtime.keras_mode=jax"),
                           ["runtime.keras_mode", "'graph'", "'xla'"]),
    "torch mode for keras clients": (run_args("framework=keras", "runtime.torch_mode=compile"),
                                     ["runtime.torch_mode", "framework = 'keras'"]),
    "keras mode for torch clients": (run_args("runtime.keras_mode=xla"),
                                     ["runtime.keras_mode", "framework = 'torch'"]),
    "torch compile on vectorized": (run_args("backend=vectorized", "runtime.torch_mode=compile"),
                                    ["runtime.torch_mode", "backend = 'vectorized'",
                                     "allowed: torch_mode = 'eager'"]),
    "compare-frameworks unknown mode": (
        ["compare-frameworks", QUICK, "--modes", "torch-eager,jax-jit", "--out", "{inp}/../out"],
        ["jax-jit", "torch-compile", "keras-xla"]),
    "compare-frameworks zero seeds": (
        ["compare-frameworks", QUICK, "--seeds", "0", "--out", "{inp}/../out"],
        ["seeds", "1..100"]),
    "compare-frameworks target above 1": (
        ["compare-frameworks", QUICK, "--target", "1.5", "--out", "{inp}/../out"],
        ["target", "0 < target <= 1"]),
    "compare-frameworks bad key": (
        ["compare-frameworks", QUICK, "--set", "runtime.threads_per_client=0", "--out",
         "{inp}/../out"], ["runtime.threads_per_client"]),
    "mixed keys without framework mixed": (run_args("mixed.keras_fraction=0.3"),
                                           ["[mixed]", "framework = 'mixed'"]),
    "keras partition out of range": (run_args("framework=mixed", "mixed.keras_partitions=[10]"),
                                     ["mixed.keras_partitions", "[10]", "0..9"]),
    "keras fraction above 1": (run_args("framework=mixed", "mixed.keras_fraction=1.5"),
                               ["mixed.keras_fraction", "1.5"]),
    "everyone malicious": (run_args("attack.fraction=1.0"), ["attack.fraction", "less than 1"]),
    "unknown attack": (run_args("attack.kind=backdoor"),
                       ["attack.kind", "'backdoor'", "'label_flip'", "'sign_flip'"]),
    "malicious partition twice": (run_args("attack.partitions=[1, 1]"),
                                  ["attack.partitions", "twice"]),
    "zero attack scale": (run_args("attack.scale=0"), ["attack.scale", "greater than 0"]),
    "local steps list too short": (run_args("heterogeneity.local_steps=[1, 2]"),
                                   ["heterogeneity.local_steps", "one per partition"]),
    "zero local steps": (run_args("heterogeneity.local_steps=[0,1,1,1,1,1,1,1,1,1]"),
                         ["heterogeneity.local_steps", ">= 1"]),
    # (braces doubled: the arguments go through str.format)
    "steps min above max": (run_args('heterogeneity.local_steps={{dist = "uniform", min = 5, '
                                     'max = 2}}'), ["heterogeneity.local_steps", "min = 5 > max"]),
    "unknown steps distribution": (run_args('heterogeneity.local_steps={{dist = "pareto"}}'),
                                   ["heterogeneity.local_steps.dist", "'pareto'",
                                    "'lognormal'"]),
    "unknown steps key": (run_args("heterogeneity.local_steps={{medain = 3}}"),
                          ["heterogeneity.local_steps.medain", "allowed keys", "median"]),
    "steps neither list nor table": (run_args("heterogeneity.local_steps=x"),
                                     ["heterogeneity.local_steps", "'x'", "a list"]),
    "heterogeneous steps under dp-sgd": (
        run_args("heterogeneity.local_steps={{median = 4.0}}", "privacy.sample.enabled=true"),
        ["heterogeneity.local_steps", "privacy.sample.enabled"]),
    "evaluate seed out of range": (run_args("federation.evaluate_seed=-1"),
                                   ["federation.evaluate_seed"]),
    "min_train_replies under client-level DP": (
        run_args("privacy.client.mode=server_fixed", "federation.min_train_replies=2"),
        ["federation.min_train_replies", "client-level DP"]),
    "name with slash": (run_args("name=a/b"), ["name='a/b'", "safe directory name"]),
    "name with dots": (run_args("name=../up"), ["name='../up'"]),
    "empty name": (run_args("name="), ["name=''"]),
    "zero width layer": (run_args("model.hidden=[0]"), ["model.hidden"]),
    "model too large": (run_args("model.arch=mlp", "model.hidden=[100000, 100000]"),
                        ["model.max_memory_gb", "parameters"]),
    "vectorized with keras": (run_args("backend=vectorized", "framework=keras"),
                              ["backend = 'vectorized'", "framework = 'keras'",
                               "allowed: framework = 'torch'"]),
    "vectorized with mixed": (run_args("backend=vectorized", "framework=mixed"),
                              ["backend = 'vectorized'", "framework = 'mixed'"]),
    "too many cpus for ray": (run_args("backend=ray", "ray.num_cpus_per_client=4096"),
                              ["ray.num_cpus_per_client"]),
    "too many gpus for local ray": (run_args("backend=ray", "ray.num_gpus_per_client=4096"),
                                    ["ray.num_gpus_per_client", "ray.address"]),
    "ray address not host:port": (run_args("backend=ray", "ray.address=localhost"),
                                  ["ray.address", "host:port"]),
    "root certificates of a local deployment": (
        run_args("backend=deployment", "deployment.root_certificates=ca.pem"),
        ["deployment.root_certificates", "deployment.tls"]),
    "missing deployment CA file": (
        run_args("backend=deployment", "deployment.superlink=127.0.0.1:9093",
                 "deployment.root_certificates={inp}/nope.pem"),
        ["deployment.root_certificates", "nope.pem", "no such file"]),
    "unreachable target epsilon": (run_args("privacy.sample.enabled=true",
                                            "privacy.sample.target_epsilon=0.001"),
                                   ["privacy.sample.target_epsilon"]),
    "dp-sgd with dropout": (run_args("privacy.sample.enabled=true", "model.dropout=0.5"),
                            ["model.dropout"]),
    "budget without dp": (run_args("privacy.budget_epsilon=5"), ["privacy.budget_epsilon"]),
    "adaptive noise too large": (run_args("privacy.client.mode=server_adaptive",
                                          "privacy.client.noise_multiplier=5"),
                                 ["privacy.client.clipped_count_stddev"]),
    "canary client out of range": (run_args("privacy.audit.canaries=4",
                                            "privacy.audit.canary_client=99"),
                                   ["privacy.audit.canary_client"]),
    "zero fraction_train": (run_args("federation.fraction_train=0"),
                            ["federation.fraction_train"]),
    "fraction_train above 1": (run_args("federation.fraction_train=1.5"),
                               ["federation.fraction_train"]),
    "strategy arg out of range": (run_args("federation.strategy=fedadam",
                                           "federation.strategy_args.eta=-1.0"), ["eta"]),
    "unknown strategy arg": (run_args("federation.strategy_args.bogus=1"), ["bogus"]),
    "client dp around a median": (run_args("federation.strategy=fedmedian",
                                           "privacy.client.mode=server_fixed"),
                                  ["privacy.client.mode", "fedmedian"]),
    "krum with too many malicious clients": (
        run_args("federation.strategy=krum", "federation.strategy_args.num_malicious_nodes=4"),
        ["federation.strategy_args.num_malicious_nodes = 4", "n > 2f + 2", "allowed"]),
    "multikrum selecting more than n - f": (
        run_args("federation.strategy=multikrum",
                 "federation.strategy_args.num_nodes_to_select=11"),
        ["num_nodes_to_select = 11", "allowed: 1..10"]),
    "bulyan with too few sampled clients": (
        run_args("federation.strategy=bulyan", "federation.strategy_args.num_malicious_nodes=2",
                 "federation.fraction_train=0.5"),
        ["num_malicious_nodes = 2", "n >= 4f + 3", "n = 5", "num_malicious_nodes <= 0"]),
    "attackers, client-level DP and krum": (
        run_args("federation.strategy=krum", "attack.fraction=0.2",
                 "privacy.client.mode=server_fixed"),
        ["privacy.client.mode", "krum", "allowed: fedadagrad"]),
    "scaffold with adam": (run_args("federation.strategy=scaffold", "train.optimizer=adam",
                                    "train.momentum=0"),
                           ["train.optimizer = 'adam'", "scaffold", "allowed: 'sgd'"]),
    "fednova with adam": (run_args("federation.strategy=fednova", "train.optimizer=adam",
                                   "train.momentum=0"),
                          ["train.optimizer = 'adam'", "fednova", "allowed: 'sgd'"]),
    "qfedavg under dp-sgd": (run_args("federation.strategy=qfedavg",
                                      "privacy.sample.enabled=true"),
                             ["qfedavg", "privacy.sample.enabled", "allowed"]),
    "qfedavg with a negative q": (run_args("federation.strategy=qfedavg",
                                           "federation.strategy_args.q=-1.0"),
                                  ["federation.strategy_args.q = -1.0", "[0, inf)"]),
    "scaffold under client-level dp": (run_args("federation.strategy=scaffold",
                                                "privacy.client.mode=server_fixed"),
                                       ["privacy.client.mode", "scaffold"]),
    "negative seed": (run_args("seed=-1"), ["seed"]),
    "no clients": (run_args("data.num_clients=0"), ["data.num_clients"]),
    "momentum with adam": (run_args("train.optimizer=adam", "train.momentum=0.5"),
                           ["train.momentum"]),
    "zero delta": (run_args("privacy.delta=0"), ["privacy.delta"]),
    "kernel too large": (run_args("model.kernel_size=99"), ["model.kernel_size"]),
    "more clients than data": (run_args("data.num_clients=2000"), ["data."]),
    "override without =": (run_args("rounds"), ["rounds"]),
    "output.dir is a file": (run_args("output.dir={inp}/afile.txt"), ["output.dir"]),
    # -- config and data files ------------------------------------------------------------
    "missing config file": (["run", "{inp}/nope.toml"], ["nope.toml"]),
    "malformed toml": (["run", "{inp}/broken.toml"], ["broken.toml"]),
    "sweep file given to run": (["run", SWEEP], ["fedsandbox sweep"]),
    "study file given to run": (["run", STUDY], ["fedsandbox search"]),
    "npz missing": (npz_args("absent"), ["absent.npz", "not found"]),
    "npz without y": (npz_args("no_y"), ["no_y.npz", "'y'"]),
    "npz with nan": (npz_args("nan"), ["nan.npz", "non-finite"]),
    "npz beyond float32": (npz_args("huge"), ["huge.npz", "non-finite"]),
    "npz text features": (npz_args("text"), ["text.npz", "not numeric"]),
    "npz row mismatch": (npz_args("mismatch"), ["mismatch.npz", "rows"]),
    "npz label gap": (npz_args("gap"), ["gap.npz", "0..K-1"]),
    "npz negative label": (npz_args("negative"), ["negative.npz", "labels"]),
    "npz fractional label": (npz_args("fraction"), ["fraction.npz", "labels"]),
    "npz one class": (npz_args("oneclass"), ["2 distinct labels"]),
    "npz not an archive": (npz_args("garbage"), ["garbage.npz", "cannot read"]),
    "csv missing": (csv_args("absent"), ["absent.csv", "not found"]),
    "csv header only": (csv_args("header_only"), ["header_only.csv", "data row"]),
    "csv no label column": (csv_args("no_label"), ["data.label_column", "'label'"]),
    "csv text cell": (csv_args("text"), ["text.csv", "row 2", "'f1'"]),
    "csv short row": (csv_args("short"), ["short.csv", "row 1"]),
    "csv nan cell": (csv_args("nan"), ["nan.csv", "non-finite"]),
    "csv empty cell": (csv_args("empty"), ["empty.csv", "empty cells"]),
    "csv label gap": (csv_args("gap"), ["gap.csv", "0..K-1"]),
    # -- studies and sweeps ------------------------------------------------------------------
    "study unknown key": (["search", "{inp}/study_key.toml"], ["study.n_trails"]),
    "study unknown table": (["search", "{inp}/study_table.toml"], ["unknown table"]),
    "study bad sampler": (["search", STUDY, "--set", "study.sampler=anneal"],
                          ["study.sampler", "'tpe'"]),
    "study objective order": (["search", STUDY, "--set", 'study.objectives=["epsilon"]'],
                              ["study.objectives"]),
    "study unsafe name": (["search", STUDY, "--set", "study.name=../x"], ["study.name"]),
    "study bad storage url": (["search", STUDY, "--set", "study.storage=foo:/bar"],
                              ["study.storage", "not a database URL"]),
    "study unknown storage driver": (["search", STUDY, "--set", "study.storage=nosuch://x"],
                                     ["study.storage", "cannot open"]),
    "resume a missing study": (["search", STUDY, "--resume"], ["--resume", "no study"]),
    "join a missing study": (["search", STUDY, "--join"], ["--join", "no study"]),
    "join and resume at once": (["search", STUDY, "--join", "--resume"],
                                ["--join", "--resume"]),
    "search with no processes": (["search", STUDY, "--processes", "0"],
                                 ["--processes 0", ">= 1"]),
    "workers without checkpoints under DP": (
        ["search", STUDY, "--processes", "2", "--set", "experiment.output.checkpoint=false",
         "--set", "experiment.privacy.sample.enabled=true"],
        ["2 workers", "output.checkpoint = false", "one worker"]),
    "workers with a study privacy budget": (
        ["search", STUDY, "--processes", "2", "--set", "study.privacy_budget=5",
         "--set", "experiment.privacy.sample.enabled=true"],
        ["--processes 2", "study.privacy_budget", "one worker process"]),
    "join a study with a privacy budget": (
        ["search", STUDY, "--join", "--set", "study.privacy_budget=5",
         "--set", "experiment.privacy.sample.enabled=true"],
        ["--join", "study.privacy_budget", "one worker process"]),
    "study heartbeat zero": (["search", STUDY, "--set", "study.heartbeat_interval=0"],
                             ["study.heartbeat_interval"]),
    "study experiment missing": (["search", "{inp}/study_experiment.toml"], ["nowhere.toml"]),
    "search override outside study": (["search", STUDY, "--set", "rounds=3"],
                                      ["study.rounds", "--set experiment.rounds"]),
    "sweep values not a list": (["sweep", "{inp}/sweep_scalar.toml"], ["non-empty lists"]),
    "export not a run": (["export", "{inp}", "--format", "onnx"],
                         ["not a run directory with a saved model", "weights.npz"]),
    "export unknown format": (["export", "{inp}", "--format", "pt"], ["invalid choice: 'pt'"]),
    "sweep seeds zero": (["sweep", "{inp}/sweep_seeds.toml"], ["[sweep] seeds = 0",
                                                              "a count 1..1000"]),
    "sweep without table": (["sweep", QUICK], ["[sweep] table"]),
    "sweep bad combination": (["sweep", "{inp}/sweep_bad.toml"], ["noise_multiplier"]),
    "ls on a missing directory": (["ls", "{inp}/nowhere"], ["nowhere", "not a directory"]),
    "resume a directory that is not a run": (["run", "--resume", "{inp}"],
                                            ["not a run directory"]),
    "resume a run without checkpoint": (["run", "--resume", "{inp}/stopped_run.partial"],
                                        ["no checkpoint.pkl"]),
    "resume a finished run": (["run", "--resume", "{inp}/finished_run"],
                              ["is a finished run"]),
    "resume with overrides": (["run", "--resume", "{inp}/stopped_run.partial", "--set",
                               "rounds=3"], ["--set is not allowed"]),
    "resume a ray run": (["run", "--resume", "{inp}/ray_run.partial"],
                         ["ray_run.partial", "backend 'ray'", "cannot be resumed",
                          "Ray actors"]),
    "resume a deployment run": (["run", "--resume", "{inp}/deployment_run.partial"],
                                ["deployment_run.partial", "backend 'deployment'",
                                 "cannot be resumed", "SuperNodes"]),
}


def _write_inputs(inp):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), np.arange(60) % 3
    arrays = {
        "no_y": {"x": x}, "nan": {"x": np.where(np.eye(60, 4) > 0, np.nan, x), "y": y},
        "huge": {"x": x * 1e39, "y": y}, "text": {"x": np.array([["a"] * 4] * 60), "y": y},
        "mismatch": {"x": x, "y": y[:50]}, "gap": {"x": x, "y": y * 2},
        "negative": {"x": x, "y": y - 1}, "fraction": {"x": x, "y": y + 0.5},
        "oneclass": {"x": x, "y": np.zeros(60, int)},
    }
    for name, content in arrays.items():
        np.savez(inp / f"{name}.npz", **content)
    (inp / "garbage.npz").write_bytes(b"not a zip archive")
    body = "\n".join(f"{i % 3},{i * 0.1},{i * 0.2}" for i in range(30))
    csvs = {
        "header_only": "label,f1,f2\n", "no_label": "y,f1,f2\n" + body,
        "text": "label,f1,f2\n0,1,2\n1,abc,2\n" + body, "short": "label,f1,f2\n0,1\n" + body,
        "nan": "label,f1,f2\n0,nan,2\n" + body, "empty": "label,f1,f2\n0,,2\n" + body,
        "gap": "label,f1,f2\n" + "\n".join(f"{2 * (i % 3)},{i},{i}" for i in range(30)),
    }
    for name, text in csvs.items():
        (inp / f"{name}.csv").write_text(text)
    (inp / "afile.txt").write_text("not a directory")
    for run_dir in ("stopped_run.partial", "finished_run"):
        (inp / run_dir).mkdir()
        (inp / run_dir / "config.toml").write_text(open(QUICK).read())
    for backend in ("ray", "deployment"):
        (inp / f"{backend}_run.partial").mkdir()
        (inp / f"{backend}_run.partial" / "config.toml").write_text(open(QUICK).read().replace(
            'backend = "inline"', f'backend = "{backend}"'))
    (inp / "broken.toml").write_text("rounds = = 3\n")
    study = open(STUDY).read().replace('experiment = "quickstart.toml"',
                                       f'experiment = "{QUICK}"')
    (inp / "study_key.toml").write_text(study.replace("n_trials = 30", "n_trails = 30"))
    (inp / "study_table.toml").write_text(study + "\n[extra]\na = 1\n")
    (inp / "study_experiment.toml").write_text(
        study.replace(f'experiment = "{QUICK}"', 'experiment = "nowhere.toml"'))
    (inp / "sweep_scalar.toml").write_text('[sweep]\n"data.alpha" = 0.5\n')
    (inp / "sweep_seeds.toml").write_text('[sweep]\n"data.alpha" = [0.5]\nseeds = 0\n')
    (inp / "sweep_bad.toml").write_text(
        '[sweep]\n"privacy.sample.enabled" = [true]\n'
        '"privacy.sample.noise_multiplier" = [1.0, -1.0]\n')


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_message_exit_2_and_no_debris(case, tmp_path, monkeypatch,
                                                              capsys):
    argv, must_mention = CASES[case]
    inp, cwd, out = tmp_path / "inputs", tmp_path / "cwd", tmp_path / "out"
    inp.mkdir()
    cwd.mkdir()
    _write_inputs(inp)
    monkeypatch.chdir(cwd)
    before = sorted(p.name for p in inp.iterdir())
    argv = [a.format(inp=inp) for a in argv]
    sets_output = any(a.startswith("output.dir=") for a in argv) or "--resume" in argv
    extra = ([] if sets_output else ["--set", f"output.dir={out}"] if argv[0] in ("run", "sweep")
             else ["--set", f"study.output_dir={out}"] if argv[0] == "search" else [])
    try:
        code = main([*argv, *extra])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (code, err[-3000:])
    assert "Traceback" not in err
    for fragment in must_mention:
        assert fragment in err, (fragment, err)
    assert not out.exists(), f"left {sorted(p.name for p in out.rglob('*'))}"
    assert not list(cwd.iterdir()), f"left {list(cwd.iterdir())} in the working directory"
    assert sorted(p.name for p in inp.iterdir()) == before


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
