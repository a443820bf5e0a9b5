"""Events in: validation with clear messages, no trace of a rejected statement, idempotent ids."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from recsql import api
from recsql.errors import BadInput


def counts(conn):
    return conn.execute(
        "SELECT (SELECT count(*) FROM recsql.events) AS events, (SELECT count(*) FROM recsql.event_inbox) AS inbox,"
        " (SELECT count(*) FROM recsql.items) AS items"
    ).fetchone()


GOOD = ("u1", "a", "view", None)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (("u1", "a", "teleport", None), 'unknown event type "teleport"'),
        (("", "a", "view", None), "events_user_id_check"),
        (("u1", "", "view", None), "events_item_id_check"),
        (("u\x01x", "a", "view", None), "events_user_id_check"),
        (("u1", "a" * 300, "view", None), "events_item_id_check"),
        ((None, "a", "view", None), 'null value in column "user_id"'),
        (("u1", "a", "rating", 9), "needs a value between 1 and 5"),
        (("u1", "a", "rating", None), "needs a value between 1 and 5"),
    ],
)
def test_bad_row_rejects_whole_statement(conn, bad, message):
    with pytest.raises(psycopg.Error) as info:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO recsql.events (user_id, item_id, event_type, value)"
                " VALUES (%s, %s, %s, %s), (%s, %s, %s, %s)",
                (*GOOD, *bad),
            )
    assert message in str(info.value)
    assert counts(conn) == {"events": 0, "inbox": 0, "items": 0}


def test_future_timestamp_rejected_with_hint(conn):
    future = datetime.now(UTC) + timedelta(days=30)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(
            "INSERT INTO recsql.events (user_id, item_id, event_type, ts) VALUES ('u1', 'a', 'view', %s)",
            (future,),
        )
    assert "in the future" in str(info.value)
    hint = info.value.diag.message_hint
    assert hint is not None
    assert hint.startswith("Send the time the event happened")
    assert counts(conn)["events"] == 0


def test_copy_with_one_bad_row_stores_nothing(conn):
    with pytest.raises(psycopg.Error, match="unknown event type"):
        with conn.cursor() as cur:
            with cur.copy("COPY recsql.events (user_id, item_id, event_type, ts) FROM STDIN") as cp:
                for i in range(100):
                    cp.write_row((f"u{i}", "a", "view", datetime.now(UTC)))
                cp.write_row(("u1", "a", "bogus", datetime.now(UTC)))
    assert counts(conn) == {"events": 0, "inbox": 0, "items": 0}


def test_api_translates_errors_to_bad_input(conn):
    with pytest.raises(BadInput) as info:
        api.track(conn, "u1", "a", "nope")
    assert info.value.code == "unknown_event_type"
    assert "Known types:" in str(info.value)
    with pytest.raises(BadInput) as info:
        api.track(conn, "", "a", "view")
    assert info.value.code == "invalid_user_id"
    assert counts(conn)["events"] == 0


def test_copy_of_four_columns_works_like_the_api(conn):
    ts = datetime.now(UTC) - timedelta(hours=1)
    with conn.cursor() as cur:
        with cur.copy("COPY recsql.events (user_id, item_id, event_type, ts) FROM STDIN") as cp:
            cp.write_row(("u1", "a", "view", ts))
            cp.write_row(("u1", "b", "view", ts + timedelta(seconds=1)))
    api.track(conn, "u2", "a", "view", ts=ts)
    api.track(conn, "u2", "b", "view", ts=ts + timedelta(seconds=1))
    api.flush(conn)
    rows = conn.execute(
        "SELECT user_id, count(*) AS n, bool_and(event_id IS NOT NULL) AS ids FROM recsql.events GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [{"user_id": "u1", "n": 2, "ids": True}, {"user_id": "u2", "n": 2, "ids": True}]
    pairs = conn.execute("SELECT n FROM recsql.item_pairs WHERE kind = 'v'").fetchall()
    assert [p["n"] for p in pairs] == [2]  # (a, b), stored once
    assert conn.execute("SELECT count(*) AS n FROM recsql.items").fetchone()["n"] == 2


def test_same_event_id_counts_once_on_every_path(conn):
    first = api.track(conn, "u1", "a", "purchase", event_id="order-1")
    again = api.track(conn, "u1", "a", "purchase", event_id="order-1")
    assert (first["duplicate"], again["duplicate"]) == (False, True)
    assert again["seq"] == first["seq"]
    conn.execute(
        "INSERT INTO recsql.events (event_id, user_id, item_id, event_type)"
        " VALUES ('order-1', 'u1', 'a', 'purchase'), ('order-2', 'u1', 'b', 'purchase'),"
        " ('order-2', 'u1', 'b', 'purchase')"
    )
    with conn.cursor() as cur:
        with cur.copy("COPY recsql.events (event_id, user_id, item_id, event_type) FROM STDIN") as cp:
            cp.write_row(("order-2", "u1", "b", "purchase"))
            cp.write_row(("order-3", "u1", "c", "purchase"))
    api.flush(conn)
    events = conn.execute("SELECT event_id FROM recsql.events ORDER BY seq").fetchall()
    assert [e["event_id"] for e in events] == ["order-1", "order-2", "order-3"]
    n = conn.execute(
        "SELECT sum(n) AS n FROM recsql.item_event_counts WHERE event_type = 'purchase'"
    ).fetchone()
    assert n["n"] == 3


def test_concurrent_retries_of_one_event_count_once(db_url):
    """Two sessions send the same event id while neither has committed."""
    barrier = threading.Barrier(2)
    results: list[bool] = []

    def send() -> None:
        with psycopg.connect(db_url) as c:
            barrier.wait()
            row = c.execute(
                "SELECT duplicate FROM recsql.track('u1', 'a', 'view', event_id => 'retry-1')"
            ).fetchone()
            assert row is not None
            results.append(row[0])
            c.commit()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False, True]
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM recsql.events").fetchone() == (1,)


def test_events_are_immutable(conn):
    api.track(conn, "u1", "a", "view")
    for statement in (
        "UPDATE recsql.events SET item_id = 'b'",
        "DELETE FROM recsql.events",
        "TRUNCATE recsql.events",
    ):
        with pytest.raises(psycopg.Error, match="not allowed"):
            conn.execute(statement)
    assert counts(conn)["events"] == 1


def test_shop_defined_event_type_is_usable_at_once(conn):
    conn.execute("INSERT INTO recsql.event_types (name, weight) VALUES ('share', 2.5)")
    api.track(conn, "u1", "a", "share")
    api.flush(conn)
    row = conn.execute("SELECT strength FROM recsql.user_items WHERE user_id = 'u1'").fetchone()
    assert row["strength"] == pytest.approx(2.5)


def test_event_for_unknown_item_registers_it(conn):
    api.track(conn, "u1", "new-thing", "view")
    api.flush(conn)
    item = conn.execute("SELECT item_id, title, in_stock FROM recsql.items").fetchone()
    assert item == {"item_id": "new-thing", "title": None, "in_stock": True}
