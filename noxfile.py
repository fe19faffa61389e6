"""Project sessions. All of them share one environment, built once (~3.4 GB).

The environment lives in ``.nox/fedsandbox-env`` and is rebuilt only when
``constraints.txt`` or ``pyproject.toml`` change (a stamp file holds their hash), so
``nox -s quickstart`` followed by ``nox -s tests`` installs once. torch is installed
first and pinned to 2.13.0 by the constraints file: any other torch request would pull
CUDA wheels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
ENV = ROOT / ".nox" / "fedsandbox-env"
STAMP = ENV / ".fedsandbox-stamp"
BIN = ENV / "bin"
# TensorFlow Federated's own environment (twin runs): see constraints-tff.txt.
TFF_ENV = ROOT / ".nox" / "tff-env"
TFF_STAMP = TFF_ENV / ".tff-stamp"
TFF_NO_DEPS = ("tensorflow-federated==0.87.0", "tensorflow-privacy==0.9.0")

nox.options.default_venv_backend = "none"
nox.options.sessions = ["quickstart"]


def _requirements_hash() -> str:
    digest = hashlib.sha256()
    for name in ("constraints.txt", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def _env(session: nox.Session) -> dict[str, str]:
    """Create or refresh the shared environment; return env vars that activate it."""
    wanted = _requirements_hash()
    if not (STAMP.is_file() and STAMP.read_text() == wanted):
        if not (BIN / "python").exists():
            session.run(sys.executable, "-m", "venv", str(ENV), external=True)
        pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        session.run(*pip, "-q", "torch==2.13.0", external=True)
        session.run(*pip, "-q", "-c", "constraints.txt", "-e", ".[dev]", external=True)
        STAMP.write_text(wanted)
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(ENV),
        "FLWR_TELEMETRY_ENABLED": "0",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    }


def _run(session: nox.Session, program: str, *args: str) -> None:
    env = _env(session)
    session.run(str(BIN / program), *args, env=env, external=True)


@nox.session
def quickstart(session: nox.Session) -> None:
    """Run configs/quickstart.toml in PyTorch and in Keras; print a summary of each."""
    for framework in ("torch", "keras"):
        _run(session, "fedsandbox", "run", "configs/quickstart.toml",
             "--set", f"framework={framework}", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Default test suite (both frameworks, every backend, the TFF twin); fails if no test ran.

    Builds TensorFlow Federated's own environment first (once; ~2 min, 2.5 GB) so the
    twin cross-check runs here too.
    """
    _tff_env(session)
    _postgresql(session)
    _chromium(session)
    _run(session, "python", "-m", "pytest", "-m", "not slow", "--durations=25",
         *session.posargs)


def _postgresql(session: nox.Session) -> None:
    """Install Debian's PostgreSQL server when it is missing (tests/test_study_postgres.py).

    The tests start and stop their own server; Debian's package is told not to create
    (and start) a cluster of its own. Needs root, or sudo.
    """
    if list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("initdb"):
        return
    if os.geteuid() == 0:
        sudo = []
    elif shutil.which("sudo"):
        sudo = ["sudo"]
    else:
        session.error("PostgreSQL is missing (tests/test_study_postgres.py needs its server) "
                      "and installing it needs root or sudo: apt-get install -y postgresql")
    script = ("mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' > "
              "/etc/postgresql-common/createcluster.conf && apt-get update -q && "
              "DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql")
    session.run(*sudo, "sh", "-c", script, external=True)


def _chromium(session: nox.Session) -> None:
    """Install Debian's Chromium when it is missing: the report's browser check drives it
    through Playwright (tests/test_paper.py, `nox -s paper`); nothing is downloaded by
    Playwright itself. Needs root, or sudo."""
    if shutil.which("chromium") or Path("/usr/bin/chromium").is_file():
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"] if shutil.which("sudo") else None
    if sudo is None:
        session.error("Chromium is missing (the report's browser check needs it) and "
                      "installing it needs root or sudo: apt-get install -y chromium")
    session.run(*sudo, "sh", "-c", "apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                "apt-get install -y -q chromium", external=True)


@nox.session
def paper(session: nox.Session) -> None:
    """`nox -s paper [-- --quick] [--out DIR]`: every table and figure of the report.

    Rebuilds the sections whose configs (configs/paper/, --quick: configs/paper/quick/) or
    code changed, writes DIR/report.md and a self-contained DIR/report.html (default
    DIR = paper), then opens the HTML in headless Chromium (Debian's package, installed
    here when missing) and checks that every figure loads. docs/paper.md
    """
    _chromium(session)
    _run(session, "python", "-m", "sandbox.paper", *session.posargs)
    args = session.posargs
    out = args[args.index("--out") + 1] if "--out" in args[:-1] else "paper"
    _run(session, "python", "-m", "sandbox.paper.browser", str(Path(out) / "report.html"))


@nox.session
def study_workers(session: nox.Session) -> None:
    """`nox -s study_workers -- STUDY N [search options]`: run STUDY with N worker processes.

    They share the study's storage: the journal file unless the study file (or --set)
    names one, e.g. a postgresql:// URL that workers on other machines reach too
    (`fedsandbox search STUDY --join` there). docs/distributed_search.md
    """
    import tomllib

    if len(session.posargs) < 2 or not session.posargs[1].isdigit():
        session.error("usage: nox -s study_workers -- STUDY N [fedsandbox search options]")
    study, workers, *rest = session.posargs
    named = "storage" in tomllib.loads(Path(study).read_text()).get("study", {}) or any(
        arg.startswith("study.storage=") for arg in rest)
    journal = [] if named else ["--set", "study.storage=journal"]
    _run(session, "fedsandbox", "search", study, "--set", f"study.workers={workers}",
         *journal, *rest)


@nox.session
def tests_slow(session: nox.Session) -> None:
    """Long end-to-end runs (quickstart accuracy in both frameworks, ray parity at scale)."""
    _run(session, "python", "-m", "pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, and the layer contracts of pyproject.toml (import-linter)."""
    _run(session, "ruff", "check", ".")
    _run(session, "lint-imports", "--no-logo")


@nox.session
def bench(session: nox.Session) -> None:
    """Every speed figure beside its goal: benchmarks/RESULTS.md (~40 min on 2 cores).

    Runtime overhead (bare loop / inline / pool / Ray, and t_round = a + b·K), DP-SGD
    step time and the torch-vs-Keras plain step at 1 and 2 threads, each in its own
    process (TensorFlow fixes its thread pools once per process); where an inline client
    message's time goes; vectorized clients;
    checkpoint cost; the quickstart's wall time; then the summary table at the top of
    RESULTS.md.
    """
    for threads in ("1", "2"):
        _run(session, "python", "benchmarks/bench_runtime.py", "--threads", threads,
             *session.posargs)
        _run(session, "python", "benchmarks/bench_dp.py", "--threads", threads)
        _run(session, "python", "benchmarks/bench_step_gap.py", "--threads", threads)
    _run(session, "python", "benchmarks/bench_inline_breakdown.py")
    if (ROOT / "benchmarks" / "bench_vectorized.py").is_file():
        _run(session, "python", "benchmarks/bench_vectorized.py")
    _run(session, "python", "benchmarks/bench_checkpoint.py")
    _run(session, "python", "benchmarks/bench_quickstart.py", "--threads", "1")
    _run(session, "python", "benchmarks/summary.py")


@nox.session
def dp_sweep(session: nox.Session) -> None:
    """Utility–privacy curve: configs/dp_sweep.toml in PyTorch and Keras (a few minutes)."""
    _run(session, "fedsandbox", "sweep", "configs/dp_sweep.toml", "--quiet", *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """Every registered strategy on non-IID Synthetic(1,1) and digits (alpha 0.1), and the
    robustness sweeps configs/robust_*.toml: benchmarks/COMPARE.md + benchmarks/out/compare/."""
    _run(session, "python", "-m", "benchmarks.compare_strategies", *session.posargs)


@nox.session
def study(session: nox.Session) -> None:
    """Federated HPO baselines at one client-round budget: random vs TPE+Hyperband vs KT."""
    _run(session, "python", "benchmarks/study_comparison.py", *session.posargs)


@nox.session
def crosscheck(session: nox.Session) -> None:
    """Ledger accountants vs Google's dp-accounting on the acceptance grid (~1 min)."""
    _run(session, "python", "-m", "benchmarks.crosscheck",
         "--out", "docs/accountant_crosscheck.md")


@nox.session
def deploy(session: nox.Session) -> None:
    """A config on a local Flower Deployment Engine: `nox -s deploy -- CONFIG [--set k=v]`.

    Starts a SuperLink and one SuperNode per client on 127.0.0.1, runs the config under
    `flwr run` (results directory as on inline), stops every process it started.
    `--set deployment.tls=true` runs it over TLS with certificates made for the run.
    """
    if not session.posargs:
        session.error("usage: nox -s deploy -- CONFIG [--set key=value ...]")
    config, *rest = session.posargs
    _run(session, "fedsandbox", "run", config, "--set", "backend=deployment", *rest)


@nox.session
def run(session: nox.Session) -> None:
    """Any CLI command in the shared environment: `nox -s run -- run configs/x.toml`."""
    _run(session, "fedsandbox", *session.posargs)


def _tff_requirements_hash() -> str:
    digest = hashlib.sha256((ROOT / "constraints-tff.txt").read_bytes())
    digest.update(" ".join(TFF_NO_DEPS).encode())
    return digest.hexdigest()


def _tff_env(session: nox.Session) -> None:
    """Create TFF's environment from scratch when constraints-tff.txt (or the pins) change.

    Rebuilt from an empty directory rather than upgraded in place, so that a package
    dropped from the constraints does not linger in an environment whose numbers we report.
    """
    wanted = _tff_requirements_hash()
    if TFF_STAMP.is_file() and TFF_STAMP.read_text() == wanted:
        return
    if TFF_ENV.exists():
        shutil.rmtree(TFF_ENV)
    session.run(sys.executable, "-m", "venv", str(TFF_ENV), external=True)
    python = str(TFF_ENV / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    session.run(*pip, "-r", "constraints-tff.txt", "-c", "constraints-tff.txt", external=True)
    # TFF 0.87 pins jax/jaxlib 0.4.14, which the registry lacks: its requirements are
    # installed above under our pins, TFF and TF Privacy themselves without dependencies.
    session.run(*pip, "--no-deps", *TFF_NO_DEPS, external=True)
    session.run(python, "-c", "import tensorflow_federated as tff, tensorflow_privacy; "
                "print('tensorflow-federated', tff.__version__)",
                env={"TF_CPP_MIN_LOG_LEVEL": "2"}, external=True)
    TFF_STAMP.write_text(wanted)


@nox.session
def tff(session: nox.Session) -> None:
    """TFF twin of a config (default configs/twin_fedavg.toml): `nox -s tff -- CONFIG`.

    Builds TensorFlow Federated's own environment (.nox/tff-env) if needed, then runs the
    config in the sandbox and in TFF on the same exported inputs and writes the comparison
    into the run directory's twin/ folder (docs/twins.md).
    """
    _tff_env(session)
    args = session.posargs or ["configs/twin_fedavg.toml"]
    _run(session, "python", "-m", "sandbox.engine.twin", *args)
