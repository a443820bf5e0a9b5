"""The HTTP layer: a thin Flask app over the recsql package. Views validate, call recsql, shape JSON."""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from web import admin, assets, auth, errors, health, metrics, pool, reading, schemas, tracking


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def settings_from_env() -> dict[str, Any]:
    """Server settings, from RECSQL_* environment variables (documented in docs/http-api.md)."""
    return {
        "DATABASE_URL": None,  # recsql resolves RECSQL_DATABASE_URL or the embedded server
        "ALLOW_ANONYMOUS_TRACKING": _flag("RECSQL_ALLOW_ANONYMOUS_TRACKING"),
        "OPEN_ACCESS": _flag("RECSQL_OPEN_ACCESS"),
        "DEMO": _flag("RECSQL_DEMO"),
        "RUN_WORKER": _flag("RECSQL_RUN_WORKER"),
        "RATE_LIMIT": _number("RECSQL_RATE_LIMIT", 1000),
        "RATE_LIMIT_TRACK": _number("RECSQL_RATE_LIMIT_TRACK", 50),
        "RATE_LIMIT_ANONYMOUS": _number("RECSQL_RATE_LIMIT_ANONYMOUS", 50),
        "RATE_LIMIT_DIVISOR": _number("RECSQL_RATE_LIMIT_DIVISOR", 1),
        "KEY_CACHE_SECONDS": _number("RECSQL_KEY_CACHE_SECONDS", 5),
        "POOL_SIZE": int(_number("RECSQL_POOL_SIZE", 10)),
    }


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; ``test_config`` overrides settings (e.g. DATABASE_URL) in tests."""
    app = Flask(__name__, static_folder=None)
    app.config.from_mapping(settings_from_env())
    app.config["MAX_CONTENT_LENGTH"] = schemas.MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if test_config:
        app.config.update(test_config)
    errors.register(app)
    metrics.init_app(app)
    auth.init_app(app)
    pool.init_app(app)
    for bp in (health.bp, metrics.bp, assets.bp, tracking.bp, reading.bp, admin.bp):
        app.register_blueprint(bp)
    if app.config["RUN_WORKER"]:
        _start_worker(app)
    return app


def _start_worker(app: Flask) -> None:
    """Fold and embed in this process (the demo: one command runs everything)."""
    from recsql.embeddings.worker import Embedder
    from recsql.worker import Folder

    folder = Folder(app.config["DATABASE_URL"])
    folder.start_thread()
    embedder = Embedder(app.config["DATABASE_URL"])
    embedder.start_thread()
    app.extensions["recsql_folder"] = folder
    app.extensions["recsql_embedder"] = embedder
