"""Helpers for database tests: read all derived state, reset a database between examples."""

from __future__ import annotations

from typing import Any

import psycopg

DERIVED = {
    "user_item_events": "user_id, item_key, event_type",
    "item_event_counts": "item_key, event_type",
    "item_stats": "item_key",
    "item_pairs": "kind, item_a, item_b",
    # A cache of the log, but when present it must be exactly what the log says.
    "user_windows": "user_id",
}


def snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every derived table, in key order, as plain tuples."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with conn.cursor(row_factory=psycopg.rows.tuple_row) as cur:
        for table, key in DERIVED.items():
            cur.execute(
                psycopg.sql.SQL("SELECT * FROM recsql.{} ORDER BY {}").format(
                    psycopg.sql.Identifier(table), psycopg.sql.SQL(key)
                )
            )
            # Arrays as tuples, so that rows stay hashable for the difference reported below.
            out[table] = [
                tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in cur.fetchall()
            ]
    return out


def rebuilt_snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """State after recsql.rebuild()."""
    conn.execute("SELECT recsql.rebuild()")
    return snapshot(conn)


def assert_same_state(
    incremental: dict[str, list[tuple[Any, ...]]], rebuilt: dict[str, list[tuple[Any, ...]]]
) -> None:
    for table in DERIVED:
        a, b = incremental[table], rebuilt[table]
        if a != b:
            only_a = sorted(set(a) - set(b))[:5]
            only_b = sorted(set(b) - set(a))[:5]
            raise AssertionError(f"{table} differs: incremental-only {only_a}, rebuild-only {only_b}")


def reset(conn: psycopg.Connection[Any]) -> None:
    """Empty events and derived state (test databases only)."""
    with conn.transaction():
        conn.execute("SET LOCAL recsql.forgetting = on")
        conn.execute("DELETE FROM recsql.events")
        conn.execute(
            "TRUNCATE recsql.event_inbox, recsql.user_item_events, recsql.item_event_counts,"
            " recsql.item_stats, recsql.item_pairs, recsql.pair_queue, recsql.user_windows"
        )
        conn.execute("DELETE FROM recsql.items")
        conn.execute("UPDATE recsql.fold_state SET cooc_horizon = NULL, folded_events = 0")
        conn.execute("UPDATE recsql.settings SET decay_epoch = NULL")
