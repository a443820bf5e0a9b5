"""POST /track-event, /v1/events and /v1/identify: what is stored, what is answered, cookies."""

from __future__ import annotations

import json

from recsql import api
from tests.web.conftest import bearer


def _events(conn, user_id=None):
    query = "SELECT event_id, user_id, item_id, event_type, value, session_id, properties, recommendation_id FROM recsql.events"
    if user_id is None:
        return conn.execute(query + " ORDER BY seq").fetchall()
    return conn.execute(query + " WHERE user_id = %s ORDER BY seq", (user_id,)).fetchall()


def test_shop_page_fetch_is_stored_under_a_cookie_anonymous_id(client, api_keys, conn):
    # Exactly what a shop page sends: fetch('/track-event', {method: 'POST', body: JSON.stringify(...)})
    response = client.post(
        "/track-event",
        data=json.dumps({"eventType": "view", "productId": "p1"}),
        headers={"Content-Type": "application/json", **bearer(api_keys["track"])},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "accepted"
    anonymous = body["userId"]
    assert response.headers["X-Anonymous-Id"] == anonymous
    assert f"recsql_aid={anonymous}" in response.headers["Set-Cookie"]
    assert "SameSite=Lax" in response.headers["Set-Cookie"]

    # The browser sends the cookie back: the second event belongs to the same anonymous user.
    again = client.post(
        "/track-event",
        json={"eventType": "add_to_cart", "productId": "p1"},
        headers=bearer(api_keys["track"]),
    )
    assert again.get_json()["userId"] == anonymous
    assert "Set-Cookie" not in again.headers
    rows = _events(conn, anonymous)
    assert [(r["item_id"], r["event_type"]) for r in rows] == [("p1", "view"), ("p1", "add_to_cart")]


def test_all_optional_fields_are_stored(client, api_keys, conn):
    rec_id = "01a21ade-d48b-785f-9b39-a285db2df91f"
    response = client.post(
        "/track-event",
        json={
            "eventType": "rating",
            "itemId": "p2",
            "userId": "u1",
            "eventId": "evt-1",
            "timestamp": "2026-01-02T03:04:05Z",
            "value": 4,
            "sessionId": "s1",
            "recommendationId": rec_id,
            "properties": {"page": "home"},
        },
        headers=bearer(api_keys["track"]),
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "accepted", "eventId": "evt-1", "userId": "u1"}
    assert "Set-Cookie" not in response.headers  # a signed-in user needs no anonymous id
    row = conn.execute(
        "SELECT ts, value, session_id, properties, recommendation_id::text AS rid FROM recsql.events"
    ).fetchone()
    assert row["ts"].isoformat() == "2026-01-02T03:04:05+00:00"
    assert (row["value"], row["session_id"], row["properties"], row["rid"]) == (
        4,
        "s1",
        {"page": "home"},
        rec_id,
    )


def test_epoch_millisecond_timestamps_and_anonymous_header(client, api_keys, conn):
    response = client.post(
        "/track-event",
        json={"eventType": "view", "productId": "p1", "timestamp": 1767225600000},
        headers={**bearer(api_keys["track"]), "X-Anonymous-Id": "anon-7"},
    )
    assert response.get_json()["userId"] == "anon-7"
    row = conn.execute("SELECT user_id, ts FROM recsql.events").fetchone()
    assert row["user_id"] == "anon-7" and row["ts"].isoformat() == "2026-01-01T00:00:00+00:00"


def test_a_retried_event_counts_once(client, api_keys, conn):
    event = {"eventType": "purchase", "productId": "p1", "userId": "u1", "eventId": "order-17"}
    first = client.post("/track-event", json=event, headers=bearer(api_keys["track"]))
    second = client.post("/track-event", json=event, headers=bearer(api_keys["track"]))
    assert first.get_json()["status"] == "accepted"
    assert second.status_code == 200 and second.get_json()["status"] == "duplicate"
    assert len(_events(conn)) == 1


def test_send_beacon_text_plain_with_key_in_body(client, api_keys, conn):
    payload = {"events": [{"eventType": "view", "productId": "p9", "userId": "u5"}], "key": api_keys["track"]}
    response = client.post("/v1/events", data=json.dumps(payload), content_type="text/plain;charset=UTF-8")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["accepted"] == 1
    assert [r["item_id"] for r in _events(conn, "u5")] == ["p9"]


def test_batch_reports_each_event_and_stores_only_the_good_ones(client, api_keys, conn):
    batch = [
        {"eventType": "view", "productId": "a", "userId": "u1", "eventId": "e1"},
        {
            "eventType": "teleport",
            "productId": "b",
            "userId": "u1",
            "eventId": "e2",
        },  # unknown type (database)
        {"eventType": "view", "userId": "u1"},  # no product (schema)
        {"eventType": "view", "productId": "c", "userId": "u1", "eventId": "e1"},  # same id again
        {"eventType": "view", "productId": "d", "userId": "u1", "timestamp": "2999-01-01T00:00:00Z"},
        {"eventType": "rating", "productId": "e", "userId": "u1", "value": 9},  # rating outside 1..5
        {"eventType": "purchase", "productId": "f", "userId": "u1"},
    ]
    response = client.post("/v1/events", json=batch, headers=bearer(api_keys["track"]))
    assert response.status_code == 200
    body = response.get_json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == ["accepted", "rejected", "rejected", "duplicate", "rejected", "rejected", "accepted"]
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 1, 4)
    codes = [r["error"]["code"] for r in body["results"] if r["status"] == "rejected"]
    assert codes == ["unknown_event_type", "missing_field", "timestamp_in_future", "value_out_of_range"]
    assert body["results"][2]["error"]["field"] == "[2].productId"
    assert [r["item_id"] for r in _events(conn)] == ["a", "f"]


def test_ndjson_batch(client, api_keys, conn):
    lines = "\n".join(
        json.dumps({"eventType": "view", "productId": f"p{i}", "userId": "u1"}) for i in range(3)
    )
    response = client.post(
        "/v1/events",
        data=lines + "\n",
        content_type="application/x-ndjson",
        headers=bearer(api_keys["track"]),
    )
    assert response.status_code == 200 and response.get_json()["accepted"] == 3
    assert len(_events(conn, "u1")) == 3


def test_batch_over_the_limit_is_refused_whole(client, api_keys, conn):
    batch = [{"eventType": "view", "productId": "p", "userId": "u"}] * 1001
    response = client.post("/v1/events", json=batch, headers=bearer(api_keys["track"]))
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "batch_too_large"
    assert _events(conn) == []


def test_identify_carries_anonymous_history_to_the_user(client, api_keys, conn):
    # Other shoppers teach that a goes with b.
    for user in ("s1", "s2", "s3"):
        api.track(conn, user, "a", "view")
        api.track(conn, user, "b", "view")
    api.flush(conn)
    anonymous = client.post(
        "/track-event", json={"eventType": "view", "productId": "a"}, headers=bearer(api_keys["track"])
    )
    anon_id = anonymous.get_json()["userId"]
    assert api.recommend(conn, "alice", 3)[0]["reason"] == "trending"  # alice has no history yet

    linked = client.post(
        "/v1/identify", json={"userId": "alice", "anonymousId": anon_id}, headers=bearer(api_keys["track"])
    )
    assert linked.status_code == 200 and linked.get_json() == {"userId": "alice", "anonymousId": anon_id}
    top = api.recommend(conn, "alice", 3)[0]
    assert (top["item_id"], top["reason"]) == ("b", "similar to a")


def test_identify_needs_an_anonymous_id(client, api_keys, conn):
    response = client.post("/v1/identify", json={"userId": "alice"}, headers=bearer(api_keys["track"]))
    assert response.status_code == 422 and response.get_json()["error"]["field"] == "anonymousId"
    assert conn.execute("SELECT count(*) AS n FROM recsql.user_aliases").fetchone()["n"] == 0


def test_click_with_recommendation_id_is_attributed(client, api_keys, conn):
    for user in ("s1", "s2"):
        api.track(conn, user, "a", "view")
        api.track(conn, user, "b", "view")
    api.flush(conn)
    served = client.get("/v1/items/a/similar?k=5", headers=bearer(api_keys["read"])).get_json()
    assert [i["itemId"] for i in served["items"]] == ["b"]
    rec_id = served["recommendationId"]
    for event_type in ("click", "purchase"):
        ok = client.post(
            "/track-event",
            json={"eventType": event_type, "productId": "b", "userId": "u9", "recommendationId": rec_id},
            headers=bearer(api_keys["track"]),
        )
        assert ok.status_code == 200
    rows = conn.execute(
        "SELECT surface, event_type, position FROM recsql.recommendation_events ORDER BY event_type"
    ).fetchall()
    assert [(r["surface"], r["event_type"], r["position"]) for r in rows] == [
        ("similar", "click", 1),
        ("similar", "purchase", 1),
    ]
    daily = conn.execute(
        "SELECT lists_served, lists_clicked, lists_converted, ctr FROM recsql.recommendation_daily WHERE surface = 'similar'"
    ).fetchone()
    assert (daily["lists_served"], daily["lists_clicked"], daily["lists_converted"], daily["ctr"]) == (
        1,
        1,
        1,
        1.0,
    )


def test_batch_from_the_tracker_sets_the_cookie_to_its_anonymous_id(client, api_keys, conn):
    events = [{"eventType": "view", "productId": "p1", "anonymousId": "A"}]
    response = client.post("/v1/events", json={"events": events}, headers=bearer(api_keys["track"]))
    assert response.headers["X-Anonymous-Id"] == "A"
    assert "recsql_aid=A" in response.headers["Set-Cookie"]
    again = client.post("/v1/events", json={"events": events}, headers=bearer(api_keys["track"]))
    assert "Set-Cookie" not in again.headers  # the browser already holds it
    assert [r["user_id"] for r in _events(conn)] == ["A", "A"]
