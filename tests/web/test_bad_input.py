"""Every malformed request gets a JSON error with a stable code, never a 500, and changes nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from recsql import keys
from tests.conftest import create_database, drop_database
from tests.web.conftest import bearer
from web import create_app, pool

OK: dict[str, Any] = {"eventType": "view", "productId": "p1", "userId": "u1"}
JSON = "application/json"


def _state(conn):
    return conn.execute(
        "SELECT (SELECT count(*) FROM recsql.events) AS events, (SELECT count(*) FROM recsql.items) AS items,"
        " (SELECT count(*) FROM recsql.user_aliases) AS aliases,"
        " (SELECT count(*) FROM recsql.recommendation_log) AS lists"
    ).fetchone()


# (name, method, path, body (str, bytes, None or JSON-able), content type, scope, status, code)
Case = tuple[str, str, str, Any, str | None, str, int, str]

CASES: list[Case] = [
    ("invalid json", "POST", "/track-event", "{eventType: view", JSON, "track", 400, "invalid_json"),
    ("empty body", "POST", "/track-event", "", JSON, "track", 400, "empty_body"),
    ("not utf-8", "POST", "/track-event", b"\xff\xfe{}", JSON, "track", 400, "invalid_encoding"),
    (
        "NaN literal",
        "POST",
        "/track-event",
        '{"eventType": "view", "productId": "p", "value": NaN}',
        JSON,
        "track",
        400,
        "invalid_json",
    ),
    (
        "form post",
        "POST",
        "/track-event",
        "eventType=view",
        "application/x-www-form-urlencoded",
        "track",
        415,
        "unsupported_media_type",
    ),
    ("xml", "POST", "/v1/items", "<item/>", "application/xml", "admin", 415, "unsupported_media_type"),
    ("array for object", "POST", "/track-event", [OK], JSON, "track", 422, "invalid_field"),
    ("missing type", "POST", "/track-event", {"productId": "p1"}, JSON, "track", 422, "missing_field"),
    ("missing product", "POST", "/track-event", {"eventType": "view"}, JSON, "track", 422, "missing_field"),
    ("number id", "POST", "/track-event", {**OK, "productId": 17}, JSON, "track", 422, "invalid_field"),
    ("null id", "POST", "/track-event", {**OK, "userId": None}, JSON, "track", 422, "invalid_field"),
    ("empty id", "POST", "/track-event", {**OK, "productId": ""}, JSON, "track", 422, "invalid_field"),
    ("huge id", "POST", "/track-event", {**OK, "productId": "p" * 300}, JSON, "track", 422, "invalid_field"),
    (
        "control chars",
        "POST",
        "/track-event",
        {**OK, "userId": "u\x00\x07"},
        JSON,
        "track",
        422,
        "invalid_field",
    ),
    (
        "newline in id",
        "POST",
        "/track-event",
        {**OK, "productId": "a\nb"},
        JSON,
        "track",
        422,
        "invalid_field",
    ),
    (
        "unknown type",
        "POST",
        "/track-event",
        {**OK, "eventType": "teleport"},
        JSON,
        "track",
        422,
        "unknown_event_type",
    ),
    (
        "type with caps",
        "POST",
        "/track-event",
        {**OK, "eventType": "View"},
        JSON,
        "track",
        422,
        "invalid_field",
    ),
    (
        "far future",
        "POST",
        "/track-event",
        {**OK, "timestamp": "2999-01-01T00:00:00Z"},
        JSON,
        "track",
        422,
        "timestamp_in_future",
    ),
    (
        "future millis",
        "POST",
        "/track-event",
        {**OK, "timestamp": 253402300799999},
        JSON,
        "track",
        422,
        "timestamp_in_future",
    ),
    (
        "bad timestamp",
        "POST",
        "/track-event",
        {**OK, "timestamp": "yesterday"},
        JSON,
        "track",
        422,
        "invalid_timestamp",
    ),
    ("huge value", "POST", "/track-event", {**OK, "value": 1e300}, JSON, "track", 422, "invalid_field"),
    (
        "bad uuid",
        "POST",
        "/track-event",
        {**OK, "recommendationId": "not-a-uuid"},
        JSON,
        "track",
        422,
        "invalid_field",
    ),
    ("unknown field", "POST", "/track-event", {**OK, "productID": "p1"}, JSON, "track", 422, "unknown_field"),
    (
        "properties not object",
        "POST",
        "/track-event",
        {**OK, "properties": [1]},
        JSON,
        "track",
        422,
        "invalid_field",
    ),
    ("batch not a list", "POST", "/v1/events", {"events": "all"}, JSON, "track", 422, "invalid_field"),
    ("batch of 1001", "POST", "/v1/events", [OK] * 1001, JSON, "track", 422, "batch_too_large"),
    (
        "oversize body",
        "POST",
        "/v1/events",
        json.dumps([{**OK, "properties": {"pad": "x" * 3_000_000}}]),
        JSON,
        "track",
        413,
        "body_too_large",
    ),
    (
        "identify without user",
        "POST",
        "/v1/identify",
        {"anonymousId": "a"},
        JSON,
        "track",
        422,
        "missing_field",
    ),
    (
        "identify same id twice",
        "POST",
        "/v1/identify",
        {"anonymousId": "a", "userId": "a\u0001"},
        JSON,
        "track",
        422,
        "invalid_field",
    ),
    (
        "k not a number",
        "GET",
        "/v1/users/u1/recommendations?k=ten",
        None,
        None,
        "read",
        400,
        "invalid_parameter",
    ),
    ("k too big", "GET", "/v1/trending?k=100000", None, None, "read", 400, "invalid_parameter"),
    ("k zero", "GET", "/v1/items/p1/similar?k=0", None, None, "read", 400, "invalid_parameter"),
    (
        "in_stock maybe",
        "GET",
        "/v1/users/u1/recommendations?in_stock=maybe",
        None,
        None,
        "read",
        400,
        "invalid_parameter",
    ),
    (
        "control char category",
        "GET",
        "/v1/trending?category=a%00b",
        None,
        None,
        "read",
        400,
        "invalid_parameter",
    ),
    (
        "session ids not list",
        "POST",
        "/v1/sessions/recommendations",
        {"itemIds": "p1"},
        JSON,
        "read",
        422,
        "invalid_field",
    ),
    ("negative price", "PUT", "/v1/items/x", {"price": -5}, JSON, "admin", 422, "invalid_field"),
    ("price as text", "PUT", "/v1/items/x", {"price": "cheap"}, JSON, "admin", 422, "invalid_field"),
    ("empty bulk", "POST", "/v1/items", [], JSON, "admin", 422, "invalid_field"),
    ("unknown route", "GET", "/v1/nothing", None, None, "read", 404, "route_not_found"),
    ("wrong method", "DELETE", "/track-event", None, None, "track", 405, "method_not_allowed"),
    ("hide unknown item", "DELETE", "/v1/items/nope", None, None, "admin", 404, "item_not_found"),
]


@pytest.fixture(scope="module")
def shared(server_url, template_db):
    """One database for every case: each must leave it unchanged, which the test checks."""
    name = f"recsql_bad_{uuid.uuid4().hex[:8]}"
    url = create_database(server_url, name, template_db)
    app = create_app({"DATABASE_URL": url, "TESTING": True, "RATE_LIMIT": 1e6})
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        scoped = {scope: keys.create(conn, scope).key for scope in keys.SCOPES}
        yield app.test_client(), scoped, conn
    pool.close(app)
    drop_database(server_url, name)


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "scope", "status", "code"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request_is_refused_cleanly(shared, method, path, body, ctype, scope, status, code):
    client, api_keys, conn = shared
    before = _state(conn)
    data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    headers = bearer(api_keys[scope])
    if ctype:
        headers["Content-Type"] = ctype
    response = client.open(path, method=method, data=data, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10
    assert _state(conn) == before


def test_injection_attempts_are_data(client, api_keys, conn):
    sneaky = "x'); DROP TABLE recsql.events; --"
    script = "<script>alert(1)</script>"
    response = client.post(
        "/track-event",
        json={"eventType": "view", "productId": script, "userId": sneaky},
        headers=bearer(api_keys["track"]),
    )
    assert response.status_code == 200
    row = conn.execute("SELECT user_id, item_id FROM recsql.events").fetchone()
    assert (row["user_id"], row["item_id"]) == (sneaky, script)  # stored verbatim, nothing executed
    listed = client.get("/v1/trending?category=' OR 1=1 --", headers=bearer(api_keys["read"]))
    assert listed.status_code == 200 and listed.get_json()["items"] == []
    assert response.mimetype == "application/json"  # never rendered as HTML by the API
