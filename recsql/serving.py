"""What the HTTP layer serves: batches of events with a result per event, and recommendation lists
carrying item details and an id under which each served list is logged for attribution."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from recsql import api
from recsql.errors import BadInput, NotFound, RecsqlError, translate

Conn = psycopg.Connection[Any]


def new_event_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so the event id index appends instead of splitting pages."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & ((1 << 62) - 1))
    )
    return str(uuid.UUID(int=value))


@dataclass
class Event:
    """One validated event as the HTTP layer received it."""

    user_id: str
    item_id: str
    event_type: str
    ts: datetime | None = None
    value: float | None = None
    event_id: str | None = None
    session_id: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    recommendation_id: str | None = None


@dataclass
class Outcome:
    """What happened to one event of a batch."""

    status: str  # accepted | duplicate | rejected
    event_id: str | None = None
    error: RecsqlError | None = None


_INSERT_MANY = (
    "INSERT INTO recsql.events AS e (event_id, user_id, item_id, event_type, value, ts, session_id, properties,"
    " recommendation_id)"
    " SELECT event_id, user_id, item_id, event_type, value, coalesce(ts, now()), session_id, properties,"
    " recommendation_id"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::timestamptz[], %s::text[],"
    " %s::jsonb[], %s::uuid[]) WITH ORDINALITY"
    " AS x(event_id, user_id, item_id, event_type, value, ts, session_id, properties, recommendation_id, place)"
    # Ids stored before are skipped here, not left to the events trigger, which would drop them
    # after RETURNING had reported them stored; a second copy within the batch is dropped by the
    # trigger (it is returned too, and counted once: the result is a set). In the callers' order:
    # an anti-join may hand the rows over in any, and the order is the replay order.
    " WHERE NOT EXISTS (SELECT FROM recsql.events s WHERE s.event_id = x.event_id)"
    " ORDER BY x.place"
    " RETURNING e.event_id"
)


def _insert(conn: Conn, events: Sequence[Event]) -> set[str]:
    cols: list[list[Any]] = [[] for _ in range(9)]
    for ev in events:
        for col, v in zip(
            cols,
            (
                ev.event_id,
                ev.user_id,
                ev.item_id,
                ev.event_type,
                ev.value,
                ev.ts,
                ev.session_id,
                Jsonb(ev.properties),
                ev.recommendation_id,
            ),
            strict=True,
        ):
            col.append(v)
    return {row["event_id"] for row in conn.execute(_INSERT_MANY, cols).fetchall()}


def _atomic(conn: Conn) -> AbstractContextManager[Any]:
    """A transaction around one statement, unless autocommit already makes the statement one."""
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        return nullcontext()  # saves the BEGIN and COMMIT round trips
    return conn.transaction()


def _track_one(conn: Conn, ev: Event) -> Outcome:
    """``track_many`` of a single event, in one round trip (``recsql.track``)."""
    try:
        row = api.track(
            conn,
            ev.user_id,
            ev.item_id,
            ev.event_type,
            ts=ev.ts,
            value=ev.value,
            event_id=ev.event_id,
            session_id=ev.session_id,
            properties=ev.properties,
            recommendation_id=ev.recommendation_id,
        )
    except BadInput as exc:
        return Outcome("rejected", ev.event_id, exc)
    return Outcome("duplicate" if row["duplicate"] else "accepted", str(row["event_id"]))


def track_many(conn: Conn, events: Sequence[Event]) -> list[Outcome]:
    """Store a batch in one statement; when the database rejects it, store each event on its own.

    Each event is all-or-nothing and a bad one is reported without holding back the others. The
    database's checks decide what is bad, so the rules live in one place. Must run outside a
    transaction (the connection is in autocommit mode).
    """
    for ev in events:
        ev.event_id = ev.event_id or new_event_id()
    try:
        with _atomic(conn):
            stored = _insert(conn, events)
        return _outcomes(events, stored)
    except psycopg.Error as exc:
        if isinstance(exc, psycopg.OperationalError):
            raise translate(exc) from exc
    outcomes: list[Outcome] = []
    seen: set[str] = set()
    for ev in events:
        assert ev.event_id is not None
        try:
            with _atomic(conn):
                stored = _insert(conn, [ev])
        except psycopg.Error as exc:
            error = translate(exc)
            if isinstance(error, BadInput):
                outcomes.append(Outcome("rejected", ev.event_id, error))
                continue
            raise error from exc
        fresh = ev.event_id in stored and ev.event_id not in seen
        seen.add(ev.event_id)
        outcomes.append(Outcome("accepted" if fresh else "duplicate", ev.event_id))
    return outcomes


def _outcomes(events: Sequence[Event], stored: set[str]) -> list[Outcome]:
    outcomes = []
    for ev in events:
        assert ev.event_id is not None
        if ev.event_id in stored:
            stored.discard(ev.event_id)  # a second copy in the same batch is a duplicate
            outcomes.append(Outcome("accepted", ev.event_id))
        else:
            outcomes.append(Outcome("duplicate", ev.event_id))
    return outcomes


class _Waiter:
    """One caller's event in a TrackQueue: woken with its outcome, or to store the next batch."""

    __slots__ = ("error", "event", "lead", "outcome", "woken")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.woken = threading.Event()
        self.lead = False
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None


class TrackQueue:
    """Stores single events from concurrent callers together (group commit).

    A caller that finds no batch being stored stores the waiting events itself, on a connection
    it takes from ``connect``, in one statement and one commit (``track_many``); events that arrive meanwhile wait
    and the first of them stores the next batch. Every caller returns only after its own event was
    committed, with its own outcome, so a response still means stored. Under load one commit (and
    one WAL flush, and one row for the folder's inbox) serves several requests; alone, a caller
    stores its event at once.
    """

    def __init__(self, max_batch: int = 200) -> None:
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: list[_Waiter] = []
        self._storing = False

    def track(self, connect: Callable[[], Conn], event: Event) -> Outcome:
        """Store ``event`` (alone or with others); its outcome, or the error that stopped its batch."""
        me = _Waiter(event)
        with self._lock:
            self._waiting.append(me)
            if not self._storing:
                self._storing = me.lead = True
        if not me.lead:
            me.woken.wait()
        if me.lead and me.outcome is None and me.error is None:
            self._store(connect)
        if me.error is not None:
            raise me.error
        assert me.outcome is not None
        return me.outcome

    def _store(self, connect: Callable[[], Conn]) -> None:
        """Store the waiting events (the leader's first among them), then hand the lead on."""
        with self._lock:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
        try:
            conn = connect()
            events = [w.event for w in batch]
            outcomes = [_track_one(conn, events[0])] if len(events) == 1 else track_many(conn, events)
            for waiter, outcome in zip(batch, outcomes, strict=True):
                waiter.outcome = outcome
        except BaseException as exc:  # every caller in the batch hears of it, not only the leader
            for waiter in batch:
                waiter.error = exc
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting[0].lead = True
                    self._waiting[0].woken.set()
                else:
                    self._storing = False
            for waiter in batch:
                waiter.woken.set()


@dataclass
class ServedList:
    """A recommendation list as served: its log id and the items with their catalog details."""

    recommendation_id: str
    items: list[dict[str, Any]]
    model: str | None = None


_SURFACES: dict[str, LiteralString] = {
    "user": "SELECT item_id, score, reason, NULL::integer AS together FROM recsql.recommend("
    "%(user_id)s, %(k)s, %(category)s, %(in_stock_only)s)",
    "similar": "SELECT item_id, score, NULL::text AS reason, together"
    " FROM recsql.similar_items(%(item_id)s, %(k)s, %(method)s)",
    "bought_together": "SELECT item_id, score, NULL::text AS reason, together"
    " FROM recsql.bought_together(%(item_id)s, %(k)s)",
    "trending": "SELECT item_id, score, 'trending' AS reason, NULL::integer AS together"
    " FROM recsql.trending(%(k)s, %(category)s)",
    "session": "SELECT item_id, score, reason, NULL::integer AS together"
    " FROM recsql.session_recommend(%(item_ids)s, %(k)s, %(category)s, %(in_stock_only)s)",
}


# The model for the user, and generic plans for this transaction's statements. The list functions
# are PL/pgSQL and SQL whose plans depend on arrays and settings, not on values that make a custom
# plan pay: left to choose, PostgreSQL replans the inlined ranking query on every call, which took
# about a third of recommend()'s database time. Transaction-local: the pooled connection keeps
# the server's setting for anything else.
_SERVE_MODEL = (
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', true) AS plans, m.model, st.schema_name AS state"
    " FROM (SELECT recsql.serve_model(%s) AS model) m"
    " LEFT JOIN recsql.model_states st ON st.model = m.model AND st.status = 'live'"
)


def _list_query(inner: LiteralString, state: str | None = None) -> sql.Composed:
    """The list with catalog details; from a model state's own functions when ``state`` is given."""
    source: sql.Composable = sql.SQL(inner)  # inner is one of the fixed texts above
    if state is not None:
        source = sql.SQL(inner.replace(" FROM recsql.", " FROM {state}.")).format(state=sql.Identifier(state))
    # The join may reorder rows (a merge join sorts by item id): the list keeps its rank explicitly.
    return sql.SQL(
        "SELECT r.item_id, r.score, r.reason, r.together, i.title, i.category, i.price, i.in_stock"
        " FROM (SELECT x.*, row_number() OVER () AS rank FROM ({}) x) r"
        " LEFT JOIN recsql.items i ON i.item_id = r.item_id ORDER BY r.rank"
    ).format(source)


def serve(
    conn: Conn,
    surface: str,
    *,
    k: int = 10,
    user_id: str | None = None,
    item_id: str | None = None,
    item_ids: Sequence[str] = (),
    category: str | None = None,
    in_stock_only: bool = False,
    method: str | None = None,
    log: bool = True,
) -> ServedList:
    """Compute one list, join catalog details and log it in recsql.recommendation_log.

    NotFound for an unknown anchor item of ``similar`` / ``bought_together``.
    """
    inner = _SURFACES[surface]
    query = _list_query(inner)
    params = {
        "user_id": user_id,
        "item_id": item_id,
        "item_ids": list(item_ids),
        "k": k,
        "category": category,
        "in_stock_only": in_stock_only,
        "method": method,
    }
    rec_id = new_event_id()
    try:
        # One pipeline: BEGIN, the model, the list (one round trip), then the log and COMMIT (one more).
        with conn.pipeline(), conn.transaction():
            model_cur = conn.execute(_SERVE_MODEL, (user_id,))
            rows_cur = conn.execute(query, params)
            served = model_cur.fetchone()
            model = str(served["model"]) if served and served["model"] else None
            rows = list(rows_cur.fetchall())
            if served and served["state"]:
                # A candidate in an A/B test with derived state of its own: its list comes from
                # that state (one more round trip, for its share of users only).
                rows = list(conn.execute(_list_query(inner, str(served["state"])), params).fetchall())
            if not rows and item_id is not None and not api.item_exists(conn, item_id):
                raise NotFound(f"no item {item_id!r} in the catalog", code="item_not_found")
            if log:
                conn.execute(
                    "SELECT recsql.log_served(%s, %s, %s, %s::text[], %s::text[], %s::real[], %s)",
                    (
                        rec_id,
                        surface,
                        user_id,
                        [item_id] if item_id is not None else list(item_ids),
                        [r["item_id"] for r in rows],
                        [r["score"] for r in rows],
                        model,
                    ),
                )
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return ServedList(rec_id, rows, model)
