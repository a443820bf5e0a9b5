"""One connection pool per process, opened on first use (after a gunicorn fork) and a connection
per request, returned when the request ends."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg
from flask import Flask, current_app, g
from psycopg_pool import ConnectionPool, PoolTimeout

from recsql import db
from recsql.errors import DatabaseUnavailable

_lock = threading.Lock()


def _pool(app: Flask) -> ConnectionPool:
    state = app.extensions.get("recsql_pool")
    if state is None or state[0] != os.getpid():
        with _lock:
            state = app.extensions.get("recsql_pool")
            if state is None or state[0] != os.getpid():
                url = app.config["DATABASE_URL"] or db.database_url()
                pool = db.open_pool(url, min_size=1, max_size=app.config["POOL_SIZE"])
                state = (os.getpid(), pool)
                app.extensions["recsql_pool"] = state
    return state[1]


def conn() -> psycopg.Connection[Any]:
    """This request's connection (autocommit, dict rows)."""
    if "conn" not in g:
        try:
            g.conn = _pool(current_app).getconn(timeout=5)
        except PoolTimeout as exc:
            raise DatabaseUnavailable(f"no database connection available: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to the database: {exc}") from exc
    return g.conn  # type: ignore[no-any-return]


def init_app(app: Flask) -> None:
    @app.teardown_request
    def _release(_exc: BaseException | None) -> None:
        c = g.pop("conn", None)
        if c is not None:
            _pool(app).putconn(c)


def close(app: Flask) -> None:
    """Close this process's pool (tests, shutdown)."""
    state = app.extensions.pop("recsql_pool", None)
    if state is not None and state[0] == os.getpid():
        state[1].close()
