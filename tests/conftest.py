"""Shared fixtures: one migrated template database per run, a fresh clone of it per test.

The server is RECSQL_TEST_DATABASE_URL when set (any PostgreSQL >= 15 with pgvector; the URL's
user must be allowed to create databases), else an embedded PostgreSQL under .recsql/test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from recsql import config, embedded, migrate

ROOT = Path(__file__).resolve().parent.parent


def _server_url() -> str:
    url = os.environ.get(config.TEST_DATABASE_URL_ENV)
    if url:
        return url
    return embedded.ensure_running(ROOT / ".recsql" / "test")


def _admin(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True)


def _drop(admin: psycopg.Connection[Any], name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    """Create database ``name`` (optionally from a template) and return its URL."""
    with _admin(server_url) as admin:
        _drop(admin, name)
        if template:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        else:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as admin:
        _drop(admin, name)


@pytest.fixture(scope="session")
def server_url() -> str:
    """URL of the PostgreSQL server the tests create their databases on."""
    return _server_url()


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A database migrated to head with Alembic, used as the template for every test database."""
    # Per-process name, so concurrent test runs on one server do not trample each other.
    name = f"recsql_template_{os.getpid()}"
    url = create_database(server_url, name)
    migrate.upgrade(url)
    yield name
    drop_database(server_url, name)


@pytest.fixture
def db_url(server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh database cloned from the migrated template; dropped after the test."""
    name = f"recsql_t_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template_db)
    yield url
    drop_database(server_url, name)


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection (dict rows) to the test's own database."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        yield c
