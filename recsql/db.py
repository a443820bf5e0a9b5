"""Connections: resolve the database URL once, hand out connections and one pool per process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from recsql import config, embedded
from recsql.errors import DatabaseUnavailable, SchemaMissing

_resolved_url: str | None = None


def database_url() -> str:
    """Return RECSQL_DATABASE_URL untouched, or the embedded server's URL (starting it if needed)."""
    global _resolved_url
    if _resolved_url is None:
        cfg = config.load()
        _resolved_url = cfg.database_url or embedded.ensure_running(cfg.home)
    return _resolved_url


def connect(url: str | None = None, *, autocommit: bool = True) -> psycopg.Connection[dict[str, object]]:
    """Open one connection with dict rows; the caller closes it."""
    target = url or database_url()
    try:
        return psycopg.connect(target, autocommit=autocommit, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to the database: {exc}".strip()) from exc


@contextmanager
def connection(url: str | None = None) -> Iterator[psycopg.Connection[dict[str, object]]]:
    """Yield an autocommit connection and close it afterwards."""
    conn = connect(url)
    try:
        yield conn
    finally:
        conn.close()


def open_pool(url: str | None = None, *, min_size: int = 1, max_size: int = 10) -> ConnectionPool:
    """Open this process's pool; close it with ``pool.close()``."""
    pool = ConnectionPool(
        url or database_url(),
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True, "row_factory": dict_row},
        open=False,
    )
    pool.open(wait=True, timeout=30)
    return pool


def require_schema(conn: psycopg.Connection[dict[str, object]]) -> None:
    """Raise SchemaMissing with the fix when recsql's schema is not installed."""
    row = conn.execute("SELECT to_regclass('recsql.events') IS NOT NULL AS ok").fetchone()
    if not row or not row["ok"]:
        raise SchemaMissing("recsql's schema is not installed in this database. Run `recsql db upgrade`.")
