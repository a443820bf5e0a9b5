"""Public documents: the OpenAPI description, the browser tracker and (in demo mode) the demo shop."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, current_app, jsonify, redirect, send_from_directory
from flask.typing import ResponseReturnValue

from recsql import api
from recsql.errors import RecsqlError
from web import pool
from web.spec import openapi

bp = Blueprint("assets", __name__)

STATIC = Path(__file__).resolve().parent / "static"


@bp.get("/openapi.json")
def openapi_json() -> Response:
    try:
        types: list[str] | None = api.event_types(pool.conn())
    except RecsqlError:
        types = None  # still describe the API when the database is down
    return jsonify(openapi(current_app, types))


@bp.get("/recsql.js")
def tracker() -> Response:
    resp = send_from_directory(STATIC, "recsql.js", mimetype="text/javascript", max_age=300)
    resp.headers["Access-Control-Allow-Origin"] = "*"  # a shop on another origin loads it with <script>
    return resp


@bp.get("/demo")
def demo_root() -> ResponseReturnValue:
    return redirect("/demo/")


@bp.get("/demo/")
@bp.get("/demo/<path:name>")
def demo(name: str = "index.html") -> Response:
    if not current_app.config["DEMO"]:
        abort(404)
    return send_from_directory(STATIC / "demo", name, max_age=0)
