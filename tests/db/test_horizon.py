"""The folder waits for this database's open transactions only."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from recsql import api


def test_open_transaction_in_another_database_does_not_stall_folding(db_url, conn):
    with psycopg.connect(make_conninfo(db_url, dbname="postgres")) as other:
        other.execute("SELECT pg_current_xact_id()")  # holds an xid, like a long load elsewhere
        api.track(conn, "u1", "a", "view")
        assert api.flush(conn) == 1
        other.rollback()


def test_open_transaction_here_holds_back_later_events(db_url, conn):
    with psycopg.connect(db_url) as early:
        early.execute("INSERT INTO recsql.events (user_id, item_id, event_type) VALUES ('u1', 'a', 'view')")
        api.track(conn, "u1", "b", "view")  # commits after `early` started
        assert api.flush(conn) == 0  # folding b now would put it before a in replay order
        early.commit()
    assert api.flush(conn) == 2
    order = conn.execute(
        "SELECT i.item_id FROM recsql.events e JOIN recsql.items i USING (item_id) ORDER BY e.xid, e.seq"
    ).fetchall()
    assert [r["item_id"] for r in order] == ["a", "b"]


def test_flush_inside_a_writing_transaction_leaves_its_own_events_for_later(conn):
    with conn.transaction():
        api.track(conn, "u1", "a", "view")
        assert api.flush(conn) == 0
    assert api.flush(conn) == 1


def test_idle_fold_and_refresh_do_no_work(db_url):
    """Polling with nothing pending must not touch scratch tables (catalog churn every 100 ms)."""
    with psycopg.connect(db_url, autocommit=True) as c:
        assert c.execute("SELECT recsql.fold(), recsql.refresh_neighbors()").fetchone() == (0, 0)
        assert c.execute(
            "SELECT to_regclass('pg_temp.recsql_batch'), to_regclass('pg_temp.recsql_refresh')"
        ).fetchone() == (
            None,
            None,
        )


def test_a_transaction_that_promised_no_events_does_not_hold_back_folding(db_url, conn):
    """The worker's list lane adds pairs and refreshes lists for seconds: folding goes on meanwhile."""
    with psycopg.connect(db_url) as lists:
        assert lists.execute("SELECT recsql._promise_no_events()").fetchone() == (True,)
        lists.execute("SELECT pg_current_xact_id()")  # it writes, like adding pairs
        api.track(conn, "u1", "a", "view")  # commits after `lists` got its xid
        assert api.flush(conn) == 1
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="promised to insert no events"):
            lists.execute(
                "INSERT INTO recsql.events (user_id, item_id, event_type) VALUES ('u2', 'b', 'view')"
            )
        lists.rollback()
    assert conn.execute("SELECT count(*) AS n FROM recsql.events WHERE user_id = 'u2'").fetchone()["n"] == 0


def test_a_transaction_that_wrote_first_cannot_promise(db_url, conn):
    """It may have inserted events already: they must fold before anything committed after them."""
    with psycopg.connect(db_url) as early:
        early.execute("INSERT INTO recsql.events (user_id, item_id, event_type) VALUES ('u1', 'a', 'view')")
        assert early.execute("SELECT recsql._promise_no_events()").fetchone() == (False,)
        api.track(conn, "u1", "b", "view")
        assert api.flush(conn) == 0
        early.execute("INSERT INTO recsql.events (user_id, item_id, event_type) VALUES ('u1', 'c', 'view')")
        early.commit()
    assert api.flush(conn) == 3
