"""The HTTP layer: a thin Flask app over the recsql package (the full API arrives with issue 3)."""

from __future__ import annotations

from typing import Any

from flask import Flask

from web.health import bp as health_bp


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app; ``test_config`` overrides settings (e.g. DATABASE_URL) in tests."""
    app = Flask(__name__)
    app.config.from_mapping(DATABASE_URL=None)
    if test_config:
        app.config.update(test_config)
    app.register_blueprint(health_bp)
    return app
