"""Bulk loading of rows already in memory: catalog upserts and events through COPY."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from recsql.errors import translate

EVENT_COLUMNS = ("user_id", "item_id", "event_type", "ts", "value", "event_id", "session_id")

_EVENTS = sql.Identifier("recsql", "events")


def upsert_items(conn: psycopg.Connection[Any], items: Iterable[dict[str, Any]]) -> int:
    """Insert new catalog items and update changed ones in one transaction; return rows written.

    Each dict has item_id and any of title, category, price, in_stock, properties. Unchanged
    items are left alone, so loading the same catalog twice writes nothing the second time.
    """
    try:
        with conn.transaction():
            conn.execute(
                "CREATE TEMP TABLE recsql_items_in (item_id text, title text, category text, price numeric,"
                " in_stock boolean, properties jsonb) ON COMMIT DROP"
            )
            with conn.cursor().copy(
                "COPY recsql_items_in (item_id, title, category, price, in_stock, properties) FROM STDIN"
            ) as copy:
                for it in items:
                    copy.write_row(
                        (
                            it["item_id"],
                            it.get("title"),
                            it.get("category"),
                            it.get("price"),
                            it.get("in_stock", True),
                            Jsonb(it.get("properties") or {}),
                        )
                    )
            cur = conn.execute(
                "INSERT INTO recsql.items AS i (item_id, title, category, price, in_stock, properties)"
                " SELECT item_id, title, category, price, in_stock, properties FROM recsql_items_in"
                " ORDER BY item_id"
                " ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, category = excluded.category,"
                " price = excluded.price, in_stock = excluded.in_stock, properties = excluded.properties"
                " WHERE (i.title, i.category, i.price, i.in_stock, i.properties)"
                " IS DISTINCT FROM (excluded.title, excluded.category, excluded.price, excluded.in_stock,"
                " excluded.properties)"
            )
            return cur.rowcount
    except psycopg.Error as exc:
        raise translate(exc) from exc


def copy_events(
    conn: psycopg.Connection[Any],
    rows: Iterable[Sequence[Any]],
    *,
    table: sql.Composable = _EVENTS,
) -> int:
    """COPY event tuples (EVENT_COLUMNS order) into ``table`` in one statement; return rows sent.

    Into recsql.events an event_id that is already stored is skipped by the table's trigger, so
    sending the same events twice stores them once.
    """
    query = sql.SQL("COPY {} ({}) FROM STDIN").format(
        table, sql.SQL(", ").join(map(sql.Identifier, EVENT_COLUMNS))
    )
    n = 0
    try:
        with conn.cursor().copy(query) as copy:
            for row in rows:
                copy.write_row(row)
                n += 1
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return n
