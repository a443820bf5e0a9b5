"""Events in: validation with clear messages, no trace of a rejected statement, idempotent ids."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from recsql import api
from recsql.errors import BadInput, translate


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
    """Two transactions store the same event id while neither has committed: neither can see the
    other's copy, so both calls succeed; the commit that comes second fails on the id's unique
    constraint (checked at commit), and its retry is reported as a duplicate."""
    barrier = threading.Barrier(2)
    results: list[bool] = []
    failures: list[psycopg.Error] = []

    def send() -> None:
        with psycopg.connect(db_url) as c:
            row = c.execute(
                "SELECT duplicate FROM recsql.track('u1', 'a', 'view', event_id => 'retry-1')"
            ).fetchone()
            assert row is not None
            results.append(row[0])
            barrier.wait()  # both stored their copy before either commits
            try:
                c.commit()
            except psycopg.Error as exc:
                failures.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [False, False]
    [failure] = failures
    assert isinstance(failure, psycopg.errors.UniqueViolation)
    assert failure.diag.constraint_name == "events_event_id_key"
    error = translate(failure)
    assert isinstance(error, BadInput) and error.code == "duplicate_event_id"
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        assert api.track(c, "u1", "a", "view", event_id="retry-1")["duplicate"] is True
        assert c.execute("SELECT count(*) AS n FROM recsql.events").fetchone() == {"n": 1}
        api.flush(c)
        assert c.execute("SELECT sum(n) AS n FROM recsql.item_event_counts").fetchone() == {"n": 1}


def test_api_track_reports_a_racing_copy_as_a_duplicate(db_url):
    """api.track on an autocommit connection: when the other copy commits first, the failed
    commit is retried once and reported as a duplicate, not as an error."""
    with (
        psycopg.connect(db_url) as other,
        psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c,
    ):
        other.execute("SELECT recsql.track('u1', 'a', 'view', event_id => 'race-1')")
        committed = threading.Timer(0.3, other.commit)
        committed.start()
        row = api.track(c, "u1", "a", "view", event_id="race-1")  # its commit waits for the other's
        committed.join()
        assert row["duplicate"] is True
        assert c.execute("SELECT count(*) AS n FROM recsql.events").fetchone() == {"n": 1}


def test_duplicates_within_and_across_statements_leave_one_row_each(conn):
    """COPY and INSERT: a repeat of a committed id, of an id earlier in the same transaction, and a
    second copy within one statement are all dropped; the first copy is the one kept."""
    api.track(conn, "u1", "a", "view", event_id="c1")
    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy("COPY recsql.events (event_id, user_id, item_id, event_type) FROM STDIN") as cp:
                for row in [
                    ("c1", "u9", "z", "view"),
                    ("c2", "u1", "b", "view"),
                    ("c3", "u1", "c", "view"),
                    ("c2", "u9", "z", "view"),
                    ("c4", "u1", "d", "view"),
                ]:
                    cp.write_row(row)
            assert cur.rowcount == 5  # COPY counts what it read; two of them were dropped again
        dropped = conn.execute("SELECT current_setting('recsql.duplicates_dropped') AS n").fetchone()
        assert dropped == {"n": "2"}
        conn.execute(
            "INSERT INTO recsql.events (event_id, user_id, item_id, event_type)"
            " VALUES ('c3', 'u9', 'z', 'view'), ('c5', 'u1', 'e', 'view'), ('c5', 'u9', 'z', 'view')"
        )
        dropped = conn.execute("SELECT current_setting('recsql.duplicates_dropped') AS n").fetchone()
        assert dropped == {"n": "4"}  # the transaction's total
    rows = conn.execute("SELECT event_id, user_id, item_id FROM recsql.events ORDER BY seq").fetchall()
    assert [(r["event_id"], r["user_id"], r["item_id"]) for r in rows] == [
        ("c1", "u1", "a"),
        ("c2", "u1", "b"),
        ("c3", "u1", "c"),
        ("c4", "u1", "d"),
        ("c5", "u1", "e"),
    ]
    inbox = conn.execute("SELECT sum(n) AS n FROM recsql.event_inbox").fetchone()
    assert inbox["n"] == 5  # the rows kept (c1 by track, c2-c4, c5), not the 9 stored
    api.flush(conn)
    assert conn.execute("SELECT folded_events AS n FROM recsql.fold_state").fetchone() == {"n": 5}
    assert conn.execute(
        "SELECT count(*) AS n FROM recsql.user_item_events WHERE user_id = 'u9'"
    ).fetchone() == {"n": 0}


def test_a_statement_of_only_duplicates_queues_nothing(conn):
    api.track(conn, "u1", "a", "view", event_id="d1")
    api.flush(conn)
    conn.execute(
        "INSERT INTO recsql.events (event_id, user_id, item_id, event_type)"
        " VALUES ('d1', 'u1', 'a', 'view'), ('d1', 'u1', 'a', 'view')"
    )
    assert conn.execute("SELECT count(*) AS n FROM recsql.event_inbox").fetchone() == {"n": 0}
    assert conn.execute("SELECT count(*) AS n FROM recsql.events").fetchone() == {"n": 1}


def test_server_columns_cannot_be_supplied(conn):
    """xid orders the replay and arrived_at is the server's clock: a client's values are replaced,
    and an event sent with a null id gets a generated one (the row trigger, for such rows only)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO recsql.events (event_id, user_id, item_id, event_type, xid, arrived_at)"
            " VALUES (NULL, 'u1', 'a', 'view', '5', '2001-01-01'),"
            " ('x2', 'u1', 'b', 'view', DEFAULT, '2001-01-01'), ('x3', 'u1', 'c', 'view', '7', DEFAULT)"
        )
        rows = conn.execute(
            "SELECT event_id, xid = pg_current_xact_id() AS mine, arrived_at = now() AS arrived"
            " FROM recsql.events ORDER BY seq"
        ).fetchall()
    assert [(r["mine"], r["arrived"]) for r in rows] == [(True, True)] * 3
    assert rows[0]["event_id"] and [r["event_id"] for r in rows[1:]] == ["x2", "x3"]
    assert api.flush(conn) == 3


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
