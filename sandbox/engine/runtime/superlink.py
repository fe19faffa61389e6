"""A local Flower deployment on 127.0.0.1: one SuperLink, N SuperNodes, all stopped after.

:class:`LocalDeployment` starts ``flower-superlink`` and one ``flower-supernode`` per
partition (``--node-config "partition-id=i num-partitions=N"``), insecure on loopback or
with TLS (:func:`make_certificates`: a CA and a server certificate for 127.0.0.1 made for
the run), and stops every process it started when it closes, including the
``flower-superexec`` children the SuperLink and the SuperNodes spawn (the SuperLink's
runs in a session of its own, so process groups alone would miss it; the process tree is
read from ``/proc``, Linux only). Every process gets ``FLWR_HOME`` (``home``), never the
user's ``~/.flwr``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: How long a process may take to stop after SIGTERM before it gets SIGKILL.
STOP_GRACE_S = 10.0
#: How long the SuperLink may take to listen after it was started.
START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_env(home: Path) -> dict[str, str]:
    """This process's environment with ``FLWR_HOME = home``, no telemetry and unbuffered
    output (the logs show each message when it happens)."""
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Certificates:
    """PEM files of a run's TLS set-up: the CA, and the SuperLink's certificate and key."""

    ca: Path
    server: Path
    server_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA and a server certificate for 127.0.0.1/localhost signed by it (valid 1 day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("fedsandbox run CA"))
               .issuer_name(name("fedsandbox run CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA256()))
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1"))
                   .issuer_name(ca_cert.subject).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    certs = Certificates(directory / "ca.pem", directory / "server.pem",
                         directory / "server.key")
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.server.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    write_key(server_key, certs.server_key)
    return certs


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, …), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (an ended process not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stop_tree(process: subprocess.Popen) -> None:
    """Stop ``process`` and every process below it: SIGTERM, then SIGKILL after a grace."""
    pids = [process.pid, *descendants(process.pid)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        process.poll()  # reap our own child so it does not stay a zombie
        time.sleep(0.1)
    for pid in pids + descendants(process.pid):
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
    process.wait()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class LocalDeployment:
    """SuperLink + ``num_nodes`` SuperNodes on 127.0.0.1; a context manager.

    Parameters
    ----------
    num_nodes : int
        One SuperNode per partition id ``0 .. num_nodes - 1``.
    home : Path
        ``FLWR_HOME`` of every process (Flower's config file, installed apps).
    log_dir : Path
        Each process's output goes to ``<log_dir>/<name>.log``.
    certificates : Certificates, optional
        TLS for the SuperLink's APIs; ``None``: insecure (loopback only).
    """

    def __init__(self, num_nodes: int, *, home: Path, log_dir: Path,
                 certificates: Certificates | None = None) -> None:
        self.num_nodes = num_nodes
        self.home = home
        self.log_dir = log_dir
        self.certificates = certificates
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.superlink: subprocess.Popen | None = None
        self.supernodes: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        """The environment of every Flower process of this deployment."""
        return flower_env(self.home)

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.env(),
                                    start_new_session=True)

    def _tls_args(self, *, server: bool) -> list[str]:
        certs = self.certificates
        if certs is None:
            return ["--insecure"]
        if server:
            return ["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.server),
                    "--ssl-keyfile", str(certs.server_key)]
        return ["--root-certificates", str(certs.ca)]

    def __enter__(self) -> LocalDeployment:
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self.superlink = self._start("superlink", [
                "flower-superlink", *self._tls_args(server=True), "--host", "127.0.0.1",
                "--port", str(self.port), "--disable-runtime-dependency-installation"])
            self._wait_for_superlink()
            for pid in range(self.num_nodes):
                self.supernodes.append(self.start_supernode(pid))
        except BaseException:
            self.close()
            raise
        return self

    def _wait_for_superlink(self) -> None:
        """Return once the SuperLink accepts connections (``flwr run`` fails at once
        otherwise); raise if it exits or takes longer than :data:`START_TIMEOUT_S`."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.superlink.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code "
                                   f"{self.superlink.returncode} at start; its log: "
                                   f"{self.log_dir / 'superlink.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"flower-superlink did not listen on {self.address} "
                                       f"within {START_TIMEOUT_S:g} s; its log: "
                                       f"{self.log_dir / 'superlink.log'}") from None
                time.sleep(0.1)

    def start_supernode(self, partition_id: int) -> subprocess.Popen:
        """Start the SuperNode of ``partition_id`` (its own Runtime API port)."""
        return self._start(f"supernode-{partition_id}", [
            "flower-supernode", *self._tls_args(server=False), "--superlink", self.address,
            "--port", str(free_port()), "--node-config",
            f"partition-id={partition_id} num-partitions={self.num_nodes}"])

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the SuperNodes, then the SuperLink, each with all its children."""
        for process in self.supernodes:
            stop_tree(process)
        if self.superlink is not None:
            stop_tree(self.superlink)
