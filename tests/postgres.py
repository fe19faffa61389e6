"""A throwaway PostgreSQL server for tests and measurements (Debian's ``postgresql``).

The server's data directory and Unix socket live in a fresh temporary directory; it
listens on 127.0.0.1 only, on a free port, trusts local connections and is stopped (and
its directory removed) on exit. PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` user that Debian's package creates. ``nox -s tests``
installs the package when it is missing (``noxfile.py``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

USER = "fedsandbox"  # the database role (initdb's superuser); trust authentication


def binaries() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres`` (newest version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise RuntimeError("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin "
                       "or on PATH): run `nox -s tests`, which installs Debian's "
                       "postgresql package, or `apt-get install -y postgresql`")


def _as_server_user() -> list[str]:
    """Command prefix that runs a program as an unprivileged user (root only)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root and there is no 'postgres' user for the server "
                           "(Debian's postgresql package creates it)") from None
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield its SQLAlchemy URL; stop it and remove its files."""
    bin_dir, prefix = binaries(), _as_server_user()
    home = Path(tempfile.mkdtemp(prefix="fedsandbox-pg-"))
    if prefix:
        entry = pwd.getpwnam("postgres")
        os.chown(home, entry.pw_uid, entry.pw_gid)
    data, port = home / "data", free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True)

    pg_ctl = str(bin_dir / "pg_ctl")
    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
            "-E", "UTF8", "--no-instructions")
        run(pg_ctl, "-D", str(data), "-l", str(home / "server.log"), "-w",
            "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {home}", "start")
    except subprocess.CalledProcessError as exc:
        log = home / "server.log"
        detail = log.read_text()[-2000:] if log.is_file() else ""
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
        raise RuntimeError(f"{Path(exc.cmd[len(prefix)]).name} failed: "
                           f"{exc.stderr.strip()}\n{detail}") from None
    try:
        yield f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
