"""Python calls for the SQL API: each one is a thin, typed wrapper over a recsql.* function."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from recsql.errors import BadInput, translate

Row = dict[str, Any]
Conn = psycopg.Connection[Any]


def _rows(conn: Conn, query: str, params: dict[str, Any]) -> list[Row]:
    try:
        return list(conn.execute(query, params).fetchall())
    except psycopg.Error as exc:
        raise translate(exc) from exc


def track(
    conn: Conn,
    user_id: str,
    item_id: str,
    event_type: str,
    *,
    ts: datetime | None = None,
    value: float | None = None,
    event_id: str | None = None,
    session_id: str | None = None,
    properties: dict[str, Any] | None = None,
    recommendation_id: str | None = None,
) -> Row:
    """Record one event; a repeated event_id is reported as a duplicate and counted once.

    When another transaction stores the same event_id at the same moment, the commit that comes
    second fails (``duplicate_event_id``). Where that commit was this call's own (an autocommit
    connection outside a transaction), the call is repeated once and reports the duplicate.
    """
    query = (
        "SELECT id AS event_id, seq, duplicate FROM recsql.track(%(user_id)s, %(item_id)s, %(event_type)s,"
        " coalesce(%(ts)s, now()), %(value)s, %(event_id)s, %(session_id)s, %(properties)s,"
        " %(recommendation_id)s::uuid)"
    )
    params = {
        "user_id": user_id,
        "item_id": item_id,
        "event_type": event_type,
        "ts": ts,
        "value": value,
        "event_id": event_id,
        "session_id": session_id,
        "properties": Jsonb(properties or {}),
        "recommendation_id": recommendation_id,
    }
    try:
        rows = _rows(conn, query, params)
    except BadInput as exc:
        if exc.code != "duplicate_event_id" or conn.info.transaction_status != TransactionStatus.IDLE:
            raise
        rows = _rows(conn, query, params)  # the other copy is committed now: a duplicate
    return rows[0]


def recommend(
    conn: Conn,
    user_id: str,
    k: int = 10,
    *,
    category: str | None = None,
    in_stock_only: bool = False,
    exclude_purchased: bool = True,
    exclude_seen: bool = False,
) -> list[Row]:
    """Personalised top-k for a user (trending when they have no history)."""
    return _rows(
        conn,
        "SELECT item_id, score, reason FROM recsql.recommend(%(user_id)s, %(k)s, %(category)s,"
        " %(in_stock_only)s, %(exclude_purchased)s, %(exclude_seen)s)",
        {
            "user_id": user_id,
            "k": k,
            "category": category,
            "in_stock_only": in_stock_only,
            "exclude_purchased": exclude_purchased,
            "exclude_seen": exclude_seen,
        },
    )


def similar_items(conn: Conn, item_id: str, k: int = 10, *, method: str | None = None) -> list[Row]:
    """Items similar to ``item_id``: method cooccurrence, embedding or hybrid (default: hybrid if it has a vector)."""
    return _rows(
        conn,
        "SELECT item_id, score, together FROM recsql.similar_items(%(item_id)s, %(k)s, %(method)s)",
        {"item_id": item_id, "k": k, "method": method},
    )


def bought_together(conn: Conn, item_id: str, k: int = 10) -> list[Row]:
    """Items bought together with ``item_id``."""
    return _rows(
        conn,
        "SELECT item_id, score, together FROM recsql.bought_together(%(item_id)s, %(k)s)",
        {"item_id": item_id, "k": k},
    )


def trending(conn: Conn, k: int = 10, *, category: str | None = None) -> list[Row]:
    """Items by time-decayed popularity."""
    return _rows(
        conn,
        "SELECT item_id, score FROM recsql.trending(%(k)s, %(category)s)",
        {"k": k, "category": category},
    )


def session_recommend(conn: Conn, item_ids: list[str], k: int = 10) -> list[Row]:
    """Recommendations for an anonymous session's items (most recent last)."""
    return _rows(
        conn,
        "SELECT item_id, score, reason FROM recsql.session_recommend(%(ids)s, %(k)s)",
        {"ids": item_ids, "k": k},
    )


def explain(conn: Conn, user_id: str, item_id: str) -> list[Row]:
    """The user's items that make ``item_id`` a recommendation, with their contributions."""
    return _rows(
        conn,
        "SELECT * FROM recsql.explain(%(user_id)s, %(item_id)s)",
        {"user_id": user_id, "item_id": item_id},
    )


def identify(conn: Conn, anonymous_id: str, user_id: str) -> str:
    """Link an anonymous id to a user so its history counts for them; return the user it was linked to."""
    rows = _rows(conn, "SELECT recsql.identify(%(a)s, %(u)s) AS user_id", {"a": anonymous_id, "u": user_id})
    return str(rows[0]["user_id"])


def event_types(conn: Conn) -> list[str]:
    """Names of the known event types."""
    return [r["name"] for r in _rows(conn, "SELECT name FROM recsql.event_types ORDER BY name", {})]


def item_exists(conn: Conn, item_id: str) -> bool:
    """Whether the catalog knows ``item_id``."""
    rows = _rows(conn, "SELECT 1 AS one FROM recsql.items WHERE item_id = %(item_id)s", {"item_id": item_id})
    return bool(rows)


def flush(conn: Conn) -> int:
    """Fold every committed event into derived state now; return how many were folded."""
    return int(_rows(conn, "SELECT recsql.flush() AS n", {})[0]["n"])


def fold(conn: Conn, *, defer_pairs: bool = False, max_events: int | None = None) -> int:
    """Fold committed events into the derived tables (not the neighbour lists); return how many.

    With ``defer_pairs`` their pair counts are queued for :func:`fold_pairs` (another session's job);
    with ``max_events``, only about that many of the oldest.
    """
    return int(
        _rows(conn, "SELECT recsql.fold(%(d)s, %(m)s) AS n", {"d": defer_pairs, "m": max_events})[0]["n"]
    )


def fold_pairs(conn: Conn, part: int | None = None, *, wait: bool = True) -> int:
    """Add the pair counts queued by deferred folds to item_pairs; return their events.

    With ``part`` (0 to 3) only that part of them (by item_a modulo 4), while other sessions may add
    the other parts; with ``wait=False`` it returns 0 at once when a lock it needs is taken.
    """
    return int(_rows(conn, "SELECT recsql.fold_pairs(%(p)s, %(w)s) AS n", {"p": part, "w": wait})[0]["n"])


def refresh_neighbors(conn: Conn, max_items: int | None = None, *, wait: bool = True) -> int:
    """Recompute up to ``max_items`` changed neighbour lists (all when None); return how many.

    With ``wait=False`` it returns 0 at once while pairs are queued or being added (the pairs lock
    is taken): a refresh then would only hold up their adding and redo lists they change.
    """
    return int(
        _rows(conn, "SELECT recsql.refresh_neighbors(%(m)s, %(w)s) AS n", {"m": max_items, "w": wait})[0]["n"]
    )


def rebuild(conn: Conn) -> int:
    """Recompute all derived state from the event log; return the number of events replayed."""
    return int(_rows(conn, "SELECT recsql.rebuild() AS n", {})[0]["n"])


def forget_user(conn: Conn, user_id: str) -> int:
    """Delete a user's events (and linked anonymous ids') and their contribution everywhere; return events deleted."""
    return int(_rows(conn, "SELECT recsql.forget_user(%(user_id)s) AS n", {"user_id": user_id})[0]["n"])


def fold_states(conn: Conn, max_lists: int | None = None) -> int:
    """Fold every live shadow model state (and refresh up to ``max_lists`` lists in each)."""
    return int(_rows(conn, "SELECT recsql.fold_states(%(m)s) AS n", {"m": max_lists})[0]["n"])


def needs_state(conn: Conn, model: str) -> bool:
    """Whether a model's parameters shape derived state differently from the active model's."""
    rows = _rows(
        conn,
        "SELECT EXISTS (SELECT 1 FROM recsql.models c, recsql.models a"
        " WHERE c.name = %(m)s AND a.status = 'active'"
        " AND recsql._shaping_changes(a.params, c.params) IS NOT NULL) AS needed",
        {"m": model},
    )
    return bool(rows[0]["needed"])


def model_state(conn: Conn, model: str) -> Row | None:
    """A model's shadow state (schema, status, build time), or None."""
    rows = _rows(conn, "SELECT * FROM recsql.model_states WHERE model = %(m)s", {"m": model})
    return rows[0] if rows else None


def build_model_state(conn: Conn, model: str) -> Row:
    """Build a model's shadow state from the event log (``conn`` must be in autocommit mode)."""
    try:
        conn.execute("CALL recsql.build_model_state(%s)", (model,))
    except psycopg.Error as exc:
        raise translate(exc) from exc
    state = model_state(conn, model)
    assert state is not None
    return state


def drop_model_state(conn: Conn, model: str) -> bool:
    """Drop a model's shadow state; False when it had none."""
    return bool(_rows(conn, "SELECT recsql.drop_model_state(%(m)s) AS dropped", {"m": model})[0]["dropped"])


def maintain(conn: Conn) -> Row:
    """Expire old pair formations and keep popularity in range."""
    return _rows(conn, "SELECT * FROM recsql.maintain()", {})[0]


def fold_status(conn: Conn) -> Row:
    """Pending events and the folder's last run."""
    return _rows(conn, "SELECT * FROM recsql.fold_status", {})[0]
