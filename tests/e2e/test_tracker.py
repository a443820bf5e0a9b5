"""recsql.js in a real browser: delivery, retries, idempotency, beacons, errors, keys and CORS."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from recsql import keys
from tests.e2e.helpers import OTHER_HOST, SHOP_HOST, count_events, events_of, unused_port, wait_for

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

TRACK_THREE = "['lamp', 'bulb', 'shade'].forEach((p) => recsql.trackViewEvent(p))"


def drained(tab: Any) -> None:
    tab.page.wait_for_function("recsql.pending() === 0")


def test_events_carry_ids_anonymous_id_and_session(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    sent: list[Any] = []
    tab.page.on("request", lambda r: sent.append(r) if r.url.endswith("/v1/events") else None)
    tab.open_tracker(server.url)
    tab.page.evaluate(
        "recsql.trackPurchaseEvent('lamp', 30); recsql.trackRatingEvent('bulb', 4);"
        " recsql.track('view', 'shade', {properties: {color: 'red'}, timestamp: '2024-05-01T10:00:00Z'})"
    )
    assert tab.page.evaluate("recsql.flush()") is True
    aid = tab.page.evaluate("recsql.anonymousId()")

    rows = events_of(conn, aid)
    assert [(r["event_type"], r["item_id"], r["value"]) for r in rows] == [
        ("purchase", "lamp", 30),
        ("rating", "bulb", 4),
        ("view", "shade", None),
    ]
    assert all(UUID.match(r["event_id"]) for r in rows)  # crypto.randomUUID on a secure origin
    assert len({r["session_id"] for r in rows}) == 1 and rows[0]["session_id"]
    stored = conn.execute(
        "SELECT ts, properties FROM recsql.events WHERE item_id = 'shade' AND user_id = %s", (aid,)
    ).fetchone()
    assert stored["properties"] == {"color": "red"}
    assert stored["ts"].isoformat() == "2024-05-01T10:00:00+00:00"
    # One batched request, anonymous id in the header and in every event.
    assert len(sent) == 1
    assert sent[0].headers["x-anonymous-id"] == aid
    assert {e["anonymousId"] for e in sent[0].post_data_json["events"]} == {aid}
    assert tab.page_errors() == []


def test_a_lost_delivery_is_retried_and_stored_once(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    attempts: list[dict[str, Any]] = []
    replies: list[dict[str, Any]] = []

    def flaky(route: Any) -> None:
        attempts.append(route.request.post_data_json)
        if len(attempts) == 1:
            route.abort("connectionreset")  # never reaches the server
        elif len(attempts) == 2:
            route.fetch()  # the server stores the batch ...
            route.abort("connectionreset")  # ... but the answer is lost on the way back
        else:
            response = route.fetch()
            replies.append(response.json())
            route.fulfill(response=response)

    tab.page.route("**/v1/events", flaky)
    tab.open_tracker(server.url, flushInterval=50)
    tab.page.evaluate(TRACK_THREE)
    drained(tab)

    assert len(attempts) == 3
    ids = [e["eventId"] for e in attempts[0]["events"]]
    assert all([e["eventId"] for e in a["events"]] == ids for a in attempts)  # same ids every time
    aid = tab.page.evaluate("recsql.anonymousId()")
    rows = events_of(conn, aid)
    assert [r["event_id"] for r in rows] == ids
    assert [r["item_id"] for r in rows] == ["lamp", "bulb", "shade"]
    assert replies[0]["accepted"] == 0 and replies[0]["duplicates"] == 3
    assert tab.page_errors() == []


def test_busy_server_is_retried_after_retry_after(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    times: list[float] = []

    def busy_once(route: Any) -> None:
        times.append(time.monotonic())
        if len(times) == 1:
            route.fulfill(
                status=503,
                headers={"Retry-After": "2", "Content-Type": "application/json"},
                body='{"error": {"code": "unavailable", "message": "busy", "field": null}}',
            )
        else:
            route.continue_()

    tab.page.route("**/v1/events", busy_once)
    tab.open_tracker(server.url, flushInterval=50)
    tab.page.evaluate("recsql.trackViewEvent('lamp')")
    tab.page.wait_for_function("recsql.pending() === 0", timeout=6000)

    assert len(times) == 2
    assert times[1] - times[0] >= 1.9  # Retry-After: 2 beats the ~1 s first backoff
    assert count_events(conn) == 1


def test_too_large_batch_is_split(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    sizes: list[int] = []

    def too_large_once(route: Any) -> None:
        sizes.append(len(route.request.post_data_json["events"]))
        if len(sizes) == 1:
            route.fulfill(
                status=413,
                content_type="application/json",
                body='{"error": {"code": "body_too_large", "message": "too large", "field": null}}',
            )
        else:
            route.continue_()

    tab.page.route("**/v1/events", too_large_once)
    tab.open_tracker(server.url, batchSize=4, flushInterval=60_000)
    tab.page.evaluate("['lamp', 'bulb', 'shade', 'desk'].forEach((p) => recsql.trackViewEvent(p))")
    assert tab.page.evaluate("recsql.flush()") is True

    assert sizes == [4, 2, 2]
    aid = tab.page.evaluate("recsql.anonymousId()")
    assert [r["item_id"] for r in events_of(conn, aid)] == ["lamp", "bulb", "shade", "desk"]


def test_refused_events_are_dropped_with_a_warning(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    tab.open_tracker(server.url, flushInterval=50)
    tab.page.evaluate("recsql.trackRatingEvent('lamp', 9); recsql.trackRatingEvent('bulb', 5)")
    assert tab.page.evaluate("recsql.flush()") is True  # the bad event is not retried
    aid = tab.page.evaluate("recsql.anonymousId()")
    assert [(r["item_id"], r["value"]) for r in events_of(conn, aid)] == [("bulb", 5)]
    assert any("rating lamp rejected: value_out_of_range" in w for w in tab.warnings()), tab.console

    keyed = serve()  # no key, no anonymous tracking: the server answers 401 to the whole batch
    tab.open_tracker(keyed.url, flushInterval=50)
    tab.page.evaluate("recsql.trackViewEvent('shade')")
    assert tab.page.evaluate("recsql.flush()") is True  # dropped, not retried
    assert [s.status for s in keyed.posts("/v1/events")] == [401]
    assert count_events(conn) == 1
    assert any("dropping 1 events: HTTP 401 missing_key" in w for w in tab.warnings()), tab.console
    assert tab.page.evaluate("localStorage.getItem('recsql_queue:')") is None


def test_page_hide_sends_the_queue_with_a_beacon(conn, serve, tab):
    server = serve()
    key = keys.create(conn, "track", name="beacon", allowed_origins=[server.url]).key
    tab.open_tracker(server.url, key=key, flushInterval=60_000, batchSize=100)
    tab.page.evaluate(TRACK_THREE)
    aid = tab.page.evaluate("recsql.anonymousId()")
    time.sleep(0.3)
    assert tab.page.evaluate("recsql.pending()") == 3 and server.posts("/v1/events") == []  # still queued

    tab.page.goto("about:blank")  # pagehide / visibilitychange -> sendBeacon

    rows = wait_for(lambda: events_of(conn, aid), what="the beaconed events")
    assert [r["item_id"] for r in rows] == ["lamp", "bulb", "shade"]
    [beacon] = server.posts("/v1/events")
    assert beacon.query == f"key={key}"
    assert beacon.content_type.lower() == "text/plain;charset=utf-8"  # a CORS-safe type: no preflight
    body = json.loads(beacon.body)
    assert body["key"] == key and [e["eventId"] for e in body["events"]] == [r["event_id"] for r in rows]


def test_queue_survives_a_reload(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    # No beacon: on reload only localStorage can save the queue.
    tab.page.add_init_script("Navigator.prototype.sendBeacon = () => false")
    tab.open_tracker(server.url, flushInterval=60_000)
    tab.page.evaluate(TRACK_THREE)
    queued = tab.page.evaluate("JSON.parse(localStorage.getItem('recsql_queue:'))")
    assert [e["productId"] for e in queued] == ["lamp", "bulb", "shade"]
    assert count_events(conn) == 0

    tab.page.reload()
    tab.page.wait_for_function("window.recsql && window.recsql.__recsql === true")
    tab.page.evaluate("recsql.init({})")
    drained(tab)

    rows = events_of(conn, queued[0]["anonymousId"])
    assert [r["event_id"] for r in rows] == [e["eventId"] for e in queued]
    assert tab.page.evaluate("localStorage.getItem('recsql_queue:')") is None


def test_anonymous_id_adopts_the_server_cookie(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    tab.page.context.add_cookies([{"name": "recsql_aid", "value": "known-visitor", "url": server.url}])
    tab.open_tracker(server.url)
    tab.page.evaluate("recsql.trackViewEvent('lamp')")
    assert tab.page.evaluate("recsql.flush()") is True

    assert tab.page.evaluate("recsql.anonymousId()") == "known-visitor"
    assert tab.page.evaluate("localStorage.getItem('recsql_aid')") == "known-visitor"
    assert [r["item_id"] for r in events_of(conn, "known-visitor")] == ["lamp"]


def test_identify_sends_later_events_as_the_user(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    tab.open_tracker(server.url)
    tab.page.evaluate("recsql.trackViewEvent('lamp')")
    aid = tab.page.evaluate("recsql.anonymousId()")
    answer = tab.page.evaluate("recsql.identify('alice')")
    tab.page.evaluate("recsql.trackViewEvent('bulb')")
    assert tab.page.evaluate("recsql.flush()") is True

    assert answer == {"userId": "alice", "anonymousId": aid}
    assert [r["item_id"] for r in events_of(conn, aid)] == ["lamp"]
    assert [r["item_id"] for r in events_of(conn, "alice")] == ["bulb"]
    link = conn.execute("SELECT user_id FROM recsql.user_aliases WHERE alias_id = %s", (aid,)).fetchone()
    assert link == {"user_id": "alice"}
    assert tab.page.evaluate("recsql.userId()") == "alice"


GARBAGE = """async () => {
  const circular = {}; circular.self = circular;
  const calls = [
    () => recsql.track(),
    () => recsql.track(null, undefined, null),
    () => recsql.track({}, [], 5),
    () => recsql.track(Symbol('s'), 'lamp'),
    () => recsql.track('view', 'x'.repeat(5000)),
    () => recsql.track('view', 'lamp', 'not an object'),
    () => recsql.track('view', 'bulb', {properties: circular, value: 'many', timestamp: {}}),
    () => recsql.trackPurchaseEvent(undefined, NaN),
    () => recsql.trackClickEvent('shade', {not: 'an id'}),
    () => recsql.init('garbage'),
    () => recsql.init({batchSize: -5, flushInterval: 'soon', endpoint: 42, key: 7}),
    () => recsql.init(null),
  ];
  const returned = calls.map((call) => {
    try { return typeof call(); } catch (e) { return 'threw ' + e; }
  });
  const identified = await recsql.identify({});
  const flushed = await recsql.flush();
  return {returned, identified, flushed, pending: recsql.pending()};
}"""


def test_tracker_never_throws_into_the_page(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    tab.open_tracker(server.url, endpoint=f"http://127.0.0.1:{unused_port()}")  # nothing listens there
    outcome = tab.page.evaluate(GARBAGE)

    assert outcome["returned"] == ["undefined"] * 12
    assert outcome["identified"] is None
    assert outcome["flushed"] is False  # unreachable: kept for a retry
    assert outcome["pending"] == 3  # lamp, bulb (without its bad props) and the shade click
    time.sleep(1.2)  # a backoff retry runs and fails again, still quietly
    assert tab.page_errors() == []

    # Once the endpoint is right, exactly the valid events arrive.
    tab.page.evaluate(f"recsql.init({{endpoint: '{server.url}'}})")
    assert tab.page.evaluate("recsql.flush()") is True
    aid = tab.page.evaluate("recsql.anonymousId()")
    rows = events_of(conn, aid)
    assert [(r["event_type"], r["item_id"], r["value"]) for r in rows] == [
        ("view", "lamp", None),
        ("view", "bulb", None),
        ("click", "shade", None),
    ]
    assert tab.page_errors() == []


def test_tracker_works_without_storage_cookies_or_random_uuid(conn, serve, tab):
    server = serve(ALLOW_ANONYMOUS_TRACKING=True)
    tab.page.add_init_script(
        """
        for (const name of ['localStorage', 'sessionStorage']) {
          Object.defineProperty(window, name, {get() { throw new DOMException('denied', 'SecurityError'); }});
        }
        Object.defineProperty(Document.prototype, 'cookie', {get() { throw new Error('no cookies'); }});
        Crypto.prototype.randomUUID = undefined;
        """
    )
    tab.open_tracker(server.url)
    tab.page.evaluate("recsql.trackViewEvent('lamp'); recsql.trackViewEvent('bulb')")
    assert tab.page.evaluate("recsql.flush()") is True

    aid = tab.page.evaluate("recsql.anonymousId()")
    assert UUID.match(aid)  # the getRandomValues fallback
    rows = events_of(conn, aid)
    assert [r["item_id"] for r in rows] == ["lamp", "bulb"]
    assert all(UUID.match(r["event_id"]) for r in rows)
    assert tab.page_errors() == []


def test_key_and_cors_allow_the_listed_origin_and_refuse_others(conn, serve, pages_server, new_tab):
    server = serve()  # keys required
    shop_origin = f"http://{SHOP_HOST}:{pages_server.port}"
    other_origin = f"http://{OTHER_HOST}:{pages_server.port}"
    key = keys.create(conn, "track", name="web", allowed_origins=[shop_origin]).key

    allowed = new_tab()
    sent: list[Any] = []
    allowed.page.on("request", lambda r: sent.append(r) if r.url.endswith("/v1/events") else None)
    allowed.open_tracker(shop_origin, api=server.url, key=key, flushInterval=60_000)
    allowed.page.evaluate("recsql.trackViewEvent('lamp')")
    assert allowed.page.evaluate("recsql.flush()") is True
    allowed.page.evaluate("recsql.trackViewEvent('bulb')")
    allowed_aid = allowed.page.evaluate("recsql.anonymousId()")
    allowed.page.goto("about:blank")  # the beacon carries the key in the query and the body
    rows = wait_for(lambda: len(events_of(conn, allowed_aid)) == 2 and events_of(conn, allowed_aid))
    assert [r["item_id"] for r in rows] == ["lamp", "bulb"]
    assert sent[0].headers["authorization"] == f"Bearer {key}"

    refused = new_tab()
    refused.open_tracker(other_origin, api=server.url, key=key, flushInterval=60_000)
    refused.page.evaluate("recsql.trackViewEvent('shade')")
    assert refused.page.evaluate("recsql.flush()") is False  # blocked by CORS: kept, retried later
    refused_aid = refused.page.evaluate("recsql.anonymousId()")
    assert any("CORS" in line for line in refused.console), refused.console
    assert refused.page_errors() == []
    refused.page.goto("about:blank")  # a beacon needs no preflight: the server must refuse it itself
    [beacon] = wait_for(
        lambda: [s for s in server.posts("/v1/events") if s.origin == other_origin and s.status],
        what="the refused page's beacon to be answered",
    )
    assert beacon.status == 403 and beacon.query == f"key={key}"
    assert events_of(conn, refused_aid) == []
    assert count_events(conn) == 2
