"""Small folds and refresh rounds (the worker under steady traffic) read the big tables by key.

Their statements are planned just after the scratch tables are truncated, when the planner guesses
ten pages of rows in each and would hash every item for a handful of rows (migration 0013).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from recsql import api

CATALOG = 20_000


@pytest.fixture
def big_catalog(conn: psycopg.Connection[dict[str, Any]]) -> psycopg.Connection[dict[str, Any]]:
    """A catalog, item statistics and neighbour lists large enough that hashing them costs."""
    conn.execute(
        "INSERT INTO recsql.items (item_id) SELECT 'i' || g FROM generate_series(1, %s) g", (CATALOG,)
    )
    # Plan-shape fixtures only: rows the planner sees, not a state any fold made.
    conn.execute(
        "INSERT INTO recsql.item_stats (item_key, n_users, n_events, popularity)"
        " SELECT item_key, 1, 1, 1 FROM recsql.items"
    )
    conn.execute(
        "INSERT INTO recsql.neighbor_lists (kind, item_key, neighbors, scores, together, users)"
        " SELECT 'v', item_key, '{}', '{}', '{}', 1 FROM recsql.items"
    )
    conn.execute("ANALYZE recsql.items, recsql.item_stats, recsql.neighbor_lists")
    return conn


def _plans(conn: psycopg.Connection[dict[str, Any]], statement: str) -> list[str]:
    """The plans of every statement ``statement`` runs inside its functions (auto_explain)."""
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("LOAD 'auto_explain' needs a superuser on this server")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}")
    conn.execute(statement)
    conn.execute("SET auto_explain.log_min_duration = -1")
    return [n for n in notices if "Query Text" in n]


def _settings(conn: psycopg.Connection[dict[str, Any]]) -> tuple[str, str]:
    row = conn.execute(
        "SELECT current_setting('enable_hashjoin') AS h, current_setting('enable_mergejoin') AS m"
    ).fetchone()
    assert row is not None
    return row["h"], row["m"]


def test_a_small_fold_reads_items_by_key(big_catalog):
    conn = big_catalog
    # A log whose statistics make a range of seqs look like hundreds of events...
    conn.execute(
        "INSERT INTO recsql.events (user_id, item_id, event_type)"
        " SELECT 'v' || (g %% 9973), 'i' || (1 + g %% %s), 'view' FROM generate_series(1, 20000) g",
        (CATALOG,),
    )
    api.fold(conn)
    conn.execute("ANALYZE recsql.events, recsql.user_windows")
    # ...and the inbox's statistics, always stale: here they remember a busy moment (500 queued
    # statements), which made the planner expect a large batch and hash every item.
    conn.execute(
        "INSERT INTO recsql.event_inbox (xid, first_seq, last_seq, n)"
        " SELECT pg_current_xact_id(), g, g, 1 FROM generate_series(1, 500) g"
    )
    conn.execute("ANALYZE recsql.event_inbox")
    conn.execute("DELETE FROM recsql.event_inbox")
    api.track(conn, "u1", "i5", "view")
    api.track(conn, "u1", "i7", "view")
    api.track(conn, "v5", "i9", "view")  # a user with windows from the first fold
    plans = _plans(conn, "SELECT recsql.fold(defer_pairs => true)")
    loading = [p for p in plans if "recsql_batch (user_id" in p]
    assert loading, "the fold's batch insert was not seen"
    assert "Seq Scan on items" not in loading[0]
    assert "Index Scan using items_pkey on items" in loading[0]
    # Each user's windows by key too (migration 0014), not a hash of every user's.
    windows = [p for p in plans if "from recsql.user_windows w" in p]
    assert windows, "the fold's windows lookup was not seen"
    assert "Seq Scan on user_windows" not in windows[0]
    assert "user_windows_pkey" in windows[0]
    assert conn.execute("SELECT folded_events FROM recsql.fold_status").fetchone()["folded_events"] == 20003
    # v5's view of i9 paired with the items of its window from the first fold.
    pairs = conn.execute(
        "SELECT count(*) AS n FROM recsql.pair_queue q, unnest(q.items_a, q.items_b) p(a, b)"
        " WHERE (SELECT item_key FROM recsql.items WHERE item_id = 'i9') IN (p.a, p.b)"
    ).fetchone()
    assert pairs is not None and pairs["n"] > 0


def test_a_small_refresh_reads_statistics_and_lists_by_key(big_catalog):
    conn = big_catalog
    api.track(conn, "u1", "i5", "view")
    api.track(conn, "u1", "i7", "view")
    api.fold(conn)
    plans = _plans(conn, "SELECT recsql.refresh_neighbors()")
    assert len(plans) > 3
    for plan in plans:
        assert "Seq Scan on item_stats" not in plan
        assert "Seq Scan on neighbor_lists" not in plan
    assert [r["item_id"] for r in api.similar_items(conn, "i5", 5)] == ["i7"]


def test_rounds_leave_the_join_settings_as_they_were(conn):
    """The switch is local to the statements of a small round: a caller's transaction (flush()
    before its own queries) gets its settings back, whatever they were."""
    for hashjoin in ("on", "off"):
        api.track(conn, "u1", f"a{hashjoin}", "view")
        api.track(conn, "u1", f"b{hashjoin}", "view")
        with conn.transaction():
            conn.execute("SELECT set_config('enable_hashjoin', %s, true)", (hashjoin,))
            conn.execute("SELECT recsql.fold(defer_pairs => true)")
            assert _settings(conn) == (hashjoin, "on")
            conn.execute("SELECT recsql.fold_pairs()")
            conn.execute("SELECT recsql.refresh_neighbors()")
            assert _settings(conn) == (hashjoin, "on")
        assert _settings(conn) == ("on", "on")
