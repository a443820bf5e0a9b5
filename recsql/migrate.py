"""Apply Alembic migrations (frozen SQL under migrations/) to a database."""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from recsql.errors import RecsqlError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "recsql_alembic_version"


def _config(url: str) -> Config:
    if not (MIGRATIONS_DIR / "env.py").exists():
        raise RecsqlError(
            f"migrations not found at {MIGRATIONS_DIR}; install recsql from its source tree (pip install -e .)"
        )
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database up to ``revision``."""
    command.upgrade(_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database down to ``revision``."""
    command.downgrade(_config(url), revision)


def head() -> str:
    """Return the newest revision id."""
    rev = ScriptDirectory.from_config(_config("unused")).get_current_head()
    if rev is None:
        raise RecsqlError("no migrations found")
    return rev


def current(url: str) -> str | None:
    """Return the revision the database is at, or None when recsql was never installed."""
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{VERSION_TABLE}",)).fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(
            psycopg.sql.SQL("SELECT version_num FROM {}").format(psycopg.sql.Identifier(VERSION_TABLE))
        ).fetchone()
        return row[0] if row else None
