"""Where a study lives: SQLite (default), a journal file, or any SQLAlchemy URL."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sandbox.core.errors import ConfigError

if TYPE_CHECKING:
    from search.config import Study


def storage_url(study: Study) -> str:
    setting = study.settings.storage
    if not setting:
        return f"sqlite:///{(study.directory / 'study.db').resolve()}"
    if setting == "journal":
        return f"journal:{(study.directory / 'study.journal').resolve()}"
    return setting


def _local_file(url: str) -> Path | None:
    """The file behind a journal or SQLite URL; ``None`` for a database server."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def prepare_storage(study: Study, *, resume: bool):
    """Check ``study.storage`` and open it; on any problem a ConfigError, nothing left.

    A ``--resume`` whose storage file does not exist is refused before anything is
    created (opening it would create an empty database). A URL that SQLAlchemy cannot
    parse or connect to is a user error naming ``study.storage``; the study directory
    is removed again if this call created it.
    """
    url = storage_url(study)
    local = _local_file(url)
    if resume and local is not None and not local.is_file():
        raise ConfigError(f"--resume: there is no study storage at {local} (study.name = "
                          f"'{study.settings.name}'); run without --resume to start it")
    if local is None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(url)
        except ArgumentError:
            raise ConfigError(
                f"study.storage = {url!r} is not a database URL; allowed: \"\" (SQLite in "
                "the study directory), \"journal\", or an SQLAlchemy URL such as "
                "sqlite:///path/study.db or postgresql://user@127.0.0.1/db") from None
    created = study.directory.resolve()  # the outermost directory this call creates
    while not created.parent.exists():
        created = created.parent
    existed = created.exists()
    study.directory.mkdir(parents=True, exist_ok=True)
    try:
        return make_storage(study)
    except Exception as exc:  # noqa: BLE001 - any driver/connection error is the URL's
        if not existed:
            shutil.rmtree(created, ignore_errors=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"study.storage = {url!r}: cannot open it "
                          f"({type(exc).__name__}: {first})") from None


def make_storage(study: Study):
    import optuna

    url = storage_url(study)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
