"""App fixtures: an app on the test's own database, its client, and one key of each scope."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from recsql import keys
from web import create_app, pool


@pytest.fixture
def make_app(db_url: str) -> Iterator[Any]:
    """Build apps on the test database with extra settings; their pools close after the test."""
    apps: list[Flask] = []

    def build(**settings: Any) -> Flask:
        app = create_app({"DATABASE_URL": db_url, "KEY_CACHE_SECONDS": 0, "TESTING": True, **settings})
        apps.append(app)
        return app

    yield build
    for app in apps:
        pool.close(app)


@pytest.fixture
def app(make_app: Any) -> Flask:
    return make_app()  # type: ignore[no-any-return]


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def api_keys(conn: Any) -> dict[str, str]:
    """A plaintext key per scope, plus a header dict builder."""
    return {scope: keys.create(conn, scope, name=f"test {scope}").key for scope in keys.SCOPES}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
