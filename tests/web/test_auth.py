"""Keys, scopes, origins and rate limits."""

from __future__ import annotations

import hashlib

from click.testing import CliRunner

from recsql import cli, db, keys
from tests.web.conftest import bearer

VIEW = {"eventType": "view", "productId": "p1", "userId": "u1"}


def _count(conn):
    return conn.execute("SELECT count(*) AS n FROM recsql.events").fetchone()["n"]


def test_keys_are_stored_hashed(conn, api_keys):
    rows = conn.execute("SELECT key_id, scope, secret_hash FROM recsql.api_keys").fetchall()
    assert len(rows) == 3
    for row in rows:
        plaintext = api_keys[row["scope"]]
        assert row["key_id"] in plaintext
        assert bytes(row["secret_hash"]) == hashlib.sha256(plaintext.encode()).digest()
        assert plaintext.encode() not in bytes(row["secret_hash"])


def test_missing_malformed_and_unknown_keys_are_401(client, conn, api_keys):
    assert client.post("/track-event", json=VIEW).get_json()["error"]["code"] == "missing_key"
    basic = client.post("/track-event", json=VIEW, headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401 and basic.get_json()["error"]["code"] == "invalid_authorization"
    forged = api_keys["admin"][:-4] + "AAAA"  # right id, wrong secret
    for key in ("nonsense", forged):
        response = client.post("/track-event", json=VIEW, headers=bearer(key))
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_key"
    assert _count(conn) == 0


def test_revoked_key_is_refused(client, conn, api_keys):
    assert client.post("/track-event", json=VIEW, headers=bearer(api_keys["track"])).status_code == 200
    keys.revoke(conn, api_keys["track"].split("_")[2])
    response = client.post("/track-event", json=VIEW, headers=bearer(api_keys["track"]))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "revoked_key"
    assert _count(conn) == 1


def test_scopes_are_ordered_track_read_admin(client, api_keys):
    assert client.post("/track-event", json=VIEW, headers=bearer(api_keys["admin"])).status_code == 200
    assert client.get("/v1/trending", headers=bearer(api_keys["admin"])).status_code == 200
    assert client.get("/v1/trending", headers=bearer(api_keys["read"])).status_code == 200
    assert client.get("/v1/trending", headers=bearer(api_keys["track"])).status_code == 403
    assert client.put("/v1/items/x", json={}, headers=bearer(api_keys["read"])).status_code == 403


def test_publishable_key_in_query_string(client, conn, api_keys):
    response = client.post(f"/track-event?key={api_keys['track']}", json=VIEW)
    assert response.status_code == 200 and _count(conn) == 1
    # Secret keys are never taken from the query string (it ends up in logs).
    assert client.get(f"/v1/trending?key={api_keys['read']}").status_code == 401


def test_cors_allows_only_the_keys_origins(client, conn):
    key = keys.create(conn, "track", allowed_origins=["https://shop.example"]).key
    ok = client.post("/track-event", json=VIEW, headers={**bearer(key), "Origin": "https://shop.example"})
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "X-Anonymous-Id" in ok.headers["Access-Control-Expose-Headers"]
    evil = client.post("/track-event", json=VIEW, headers={**bearer(key), "Origin": "https://evil.example"})
    assert evil.status_code == 403 and evil.get_json()["error"]["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in evil.headers
    assert _count(conn) == 1

    preflight = client.options(
        "/v1/events",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    refused = client.options("/v1/events", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_secret_keys_are_refused_from_foreign_pages(client, api_keys):
    response = client.get(
        "/v1/trending", headers={**bearer(api_keys["read"]), "Origin": "https://shop.example"}
    )
    assert response.status_code == 403


def test_anonymous_tracking_only_from_own_pages_when_enabled(make_app, conn):
    closed = make_app().test_client()
    assert closed.post("/track-event", json=VIEW, headers={"Origin": "http://localhost"}).status_code == 401
    client = make_app(ALLOW_ANONYMOUS_TRACKING=True).test_client()
    same = client.post("/track-event", json=VIEW, headers={"Origin": "http://localhost"})
    assert same.status_code == 200
    foreign = client.post("/track-event", json=VIEW, headers={"Origin": "https://elsewhere.example"})
    assert foreign.status_code == 403
    assert client.get("/v1/trending").status_code == 401  # reading still needs a key
    assert _count(conn) == 1


def test_rate_limit_answers_429_with_retry_after(client, conn):
    key = keys.create(conn, "read", rate_limit=2).key  # burst of 4, then 2 per second
    statuses = [client.get("/v1/trending", headers=bearer(key)).status_code for _ in range(6)]
    assert statuses[:4] == [200] * 4 and statuses[-1] == 429
    limited = client.get("/v1/trending", headers=bearer(key))
    assert limited.get_json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


def test_cli_creates_lists_and_revokes_keys(db_url, monkeypatch, conn):
    monkeypatch.setenv("RECSQL_DATABASE_URL", db_url)
    monkeypatch.setattr(db, "_resolved_url", None)
    runner = CliRunner()
    created = runner.invoke(
        cli.main, ["keys", "create", "--scope", "track", "--origin", "https://Shop.example/"]
    )
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    parsed = keys.parse(key)
    assert parsed is not None
    key_id = parsed[1]
    listed = runner.invoke(cli.main, ["keys", "list", "--format", "json"])
    assert key_id in listed.stdout and key not in listed.stdout
    assert conn.execute("SELECT allowed_origins FROM recsql.api_keys").fetchone()["allowed_origins"] == [
        "https://shop.example"
    ]
    assert runner.invoke(cli.main, ["keys", "revoke", key_id]).exit_code == 0
    missing = runner.invoke(cli.main, ["keys", "revoke", "nosuchkey123"])
    assert missing.exit_code == 1 and "no API key" in missing.output
    bad = runner.invoke(cli.main, ["keys", "create", "--scope", "track", "--origin", "shop.example/path"])
    assert bad.exit_code == 1 and "origin" in bad.output
