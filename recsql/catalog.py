"""The catalog as the HTTP API sees it: read items, upsert them, hide them from recommendations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from recsql.errors import NotFound, translate

Conn = psycopg.Connection[Any]

_SELECT = (
    "SELECT item_id, title, category, price, in_stock, properties, created_at, updated_at, hidden_at"
    " FROM recsql.items"
)
_VISIBLE = " WHERE hidden_at IS NULL AND (%(category)s::text IS NULL OR category = %(category)s)"


@dataclass
class Item:
    """An item as a client sends it; absent fields become null (a PUT replaces the item)."""

    item_id: str
    title: str | None = None
    category: str | None = None
    price: Decimal | float | None = None
    in_stock: bool = True
    properties: dict[str, Any] = field(default_factory=dict)


def get_item(conn: Conn, item_id: str) -> dict[str, Any]:
    """One item, hidden or not; NotFound when the catalog has no such id."""
    row = conn.execute(
        _SELECT + " WHERE item_id = %s",
        (item_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no item {item_id!r} in the catalog", code="item_not_found")
    return dict(row)


def list_items(
    conn: Conn, *, limit: int = 50, offset: int = 0, category: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """A page of visible items in id order, and how many visible items match in all."""
    params = {"category": category, "limit": limit, "offset": offset}
    rows = conn.execute(
        _SELECT + _VISIBLE + " ORDER BY item_id LIMIT %(limit)s OFFSET %(offset)s",
        params,
    ).fetchall()
    total = conn.execute(
        "SELECT count(*) AS n FROM recsql.items"
        " WHERE hidden_at IS NULL AND (%(category)s::text IS NULL OR category = %(category)s)",
        params,
    ).fetchone()
    return [dict(r) for r in rows], int(total["n"]) if total else 0


def put_items(conn: Conn, items: Sequence[Item]) -> list[bool]:
    """Create or replace items (and show them again if hidden) in one statement; True where created.

    An id sent twice is written once, with its last version (as two PUTs in a row would).
    """
    last = {it.item_id: it for it in items}
    unique = list(last.values())
    try:
        rows = conn.execute(
            "INSERT INTO recsql.items AS i (item_id, title, category, price, in_stock, properties)"
            " SELECT item_id, title, category, price, in_stock, properties FROM unnest(%s::text[], %s::text[], %s::text[], %s::numeric[], %s::boolean[], %s::jsonb[])"
            " WITH ORDINALITY AS x(item_id, title, category, price, in_stock, properties, ord)"
            " ORDER BY ord"
            " ON CONFLICT (item_id) DO UPDATE SET title = excluded.title, category = excluded.category,"
            " price = excluded.price, in_stock = excluded.in_stock, properties = excluded.properties,"
            " hidden_at = NULL"
            " RETURNING i.item_id, (xmax = 0) AS created",
            (
                [it.item_id for it in unique],
                [it.title for it in unique],
                [it.category for it in unique],
                [it.price for it in unique],
                [it.in_stock for it in unique],
                [Jsonb(it.properties) for it in unique],
            ),
        ).fetchall()
    except psycopg.Error as exc:
        raise translate(exc) from exc
    created = {r["item_id"]: r["created"] for r in rows}
    return [bool(created[it.item_id]) for it in unique]


def hide_item(conn: Conn, item_id: str) -> None:
    """Stop recommending an item (its history stays); NotFound for an unknown id."""
    row = conn.execute(
        "UPDATE recsql.items SET hidden_at = coalesce(hidden_at, now()) WHERE item_id = %s RETURNING item_id",
        (item_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no item {item_id!r} in the catalog", code="item_not_found")
