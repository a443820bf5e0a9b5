"""Liveness and readiness: is the process up, and is the database reachable and migrated."""

from __future__ import annotations

import psycopg
from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from recsql import db, migrate
from recsql.errors import RecsqlError

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    url = current_app.config["DATABASE_URL"] or db.database_url()
    try:
        revision, head = migrate.current(url), migrate.head()
    except (RecsqlError, psycopg.Error, OSError) as exc:
        return jsonify(status="unavailable", error=str(exc).strip()), 503
    if revision != head:
        return jsonify(status="not_migrated", revision=revision, head=head), 503
    return jsonify(status="ready", revision=revision)
