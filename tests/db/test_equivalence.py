"""Incremental folding, forget_user and maintain agree exactly with recsql.rebuild()."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsql import api
from tests.db.helpers import assert_same_state, rebuilt_snapshot, reset, snapshot

NOW = datetime.now(UTC).replace(microsecond=0)
TYPES = ["view", "view", "view", "click", "add_to_cart", "remove_from_cart", "purchase", "rating", "wishlist"]

event = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from([f"u{i}" for i in range(5)]),
        "item_id": st.sampled_from([f"i{i}" for i in range(8)]),
        "event_type": st.sampled_from(TYPES),
        # Out of order on purpose, and some old enough for maintain() to expire.
        "age_days": st.integers(min_value=0, max_value=400),
        "event_id": st.one_of(st.none(), st.sampled_from([f"e{i}" for i in range(6)])),
        "value": st.integers(min_value=1, max_value=5),
    }
)

step = st.one_of(
    st.tuples(st.sampled_from(["insert", "copy", "track", "txn"]), st.lists(event, min_size=1, max_size=5)),
    st.tuples(st.just("flush"), st.just([])),
    st.tuples(st.just("maintain"), st.just([])),
    # The worker's two lanes: folds that queue their pairs, and the drain that adds them.
    st.tuples(st.just("defer"), st.just([])),
    st.tuples(st.just("pairs"), st.just([])),
    # Slices of a backlog: a prefix of the replay order, cut inside a statement too.
    st.tuples(st.just("slice1"), st.just([])),
    st.tuples(st.just("slice3"), st.just([])),
)


def _row(e: dict[str, Any]) -> tuple[Any, ...]:
    value = e["value"] if e["event_type"] == "rating" else None
    ts = NOW - timedelta(days=e["age_days"], seconds=e["value"])
    return (e["event_id"], e["user_id"], e["item_id"], e["event_type"], value, ts)


INSERT = "INSERT INTO recsql.events (event_id, user_id, item_id, event_type, value, ts) VALUES (%s, %s, %s, %s, %s, %s)"


def apply_step(conn: psycopg.Connection[Any], kind: str, events: list[dict[str, Any]]) -> None:
    rows = [_row(e) for e in events]
    if kind == "flush":
        conn.execute("SELECT recsql.flush()")
    elif kind == "maintain":
        conn.execute("SELECT * FROM recsql.maintain()")
    elif kind == "defer":
        conn.execute("SELECT recsql.fold(defer_pairs => true)")
    elif kind == "pairs":
        conn.execute("SELECT recsql.fold_pairs(), recsql.refresh_neighbors(2)")
    elif kind == "slice1":
        conn.execute("SELECT recsql.fold(max_events => 1)")
    elif kind == "slice3":
        conn.execute("SELECT recsql.fold(defer_pairs => true, max_events => 3)")
    elif kind == "insert":
        # One multi-row statement.
        with conn.cursor() as cur:
            cur.executemany(INSERT, rows)
    elif kind == "copy":
        with conn.cursor() as cur:
            with cur.copy(
                "COPY recsql.events (event_id, user_id, item_id, event_type, value, ts) FROM STDIN"
            ) as cp:
                for r in rows:
                    cp.write_row(r)
    elif kind == "track":
        for r in rows:
            conn.execute(
                "SELECT * FROM recsql.track(%s, %s, %s, %s, %s, %s)", (r[1], r[2], r[3], r[5], r[4], r[0])
            )
    elif kind == "txn":
        # Several statements in one transaction.
        with conn.transaction():
            for r in rows:
                conn.execute(INSERT, r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    steps=st.lists(step, min_size=1, max_size=25),
    window=st.integers(min_value=1, max_value=4),
    purchase_window=st.integers(min_value=1, max_value=3),
    forget=st.sampled_from([f"u{i}" for i in range(5)]),
)
def test_incremental_equals_rebuild_and_forget_is_exact(conn, steps, window, purchase_window, forget):
    reset(conn)
    conn.execute(
        "UPDATE recsql.settings SET cooc_window = %s, purchase_window = %s", (window, purchase_window)
    )
    for kind, events in steps:
        apply_step(conn, kind, events)
    conn.execute("SELECT recsql.flush()")

    incremental = snapshot(conn)
    assert_same_state(incremental, rebuilt_snapshot(conn))

    # Duplicated event ids were stored once.
    dupes = conn.execute(
        "SELECT count(*) AS n FROM (SELECT event_id FROM recsql.events GROUP BY 1 HAVING count(*) > 1) d"
    ).fetchone()
    assert dupes["n"] == 0

    # Forgetting a user leaves exactly the state of a rebuild without them.
    conn.execute("SELECT recsql.forget_user(%s)", (forget,))
    after_forget = snapshot(conn)
    left = conn.execute("SELECT count(*) AS n FROM recsql.events WHERE user_id = %s", (forget,)).fetchone()
    assert left["n"] == 0
    assert all(r[0] != forget for r in after_forget["user_item_events"])
    assert_same_state(after_forget, rebuilt_snapshot(conn))


def test_deferred_pairs_are_added_by_fold_pairs_and_before_forgetting(conn):
    """Pairs queued by fold(defer_pairs) reach item_pairs through fold_pairs(); forget_user adds any
    still queued before it subtracts, so its result is exact either way."""
    conn.execute("UPDATE recsql.settings SET cooc_window = 3")
    stream = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u2", "c"), ("u3", "c"), ("u3", "a")]
    for user, item in stream[:4]:
        conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (user, item))
    assert conn.execute("SELECT recsql.fold(defer_pairs => true) AS n").fetchone()["n"] == 4
    status = conn.execute("SELECT pending_events, pending_pair_events FROM recsql.fold_status").fetchone()
    assert (status["pending_events"], status["pending_pair_events"]) == (0, 4)
    assert conn.execute("SELECT count(*) AS n FROM recsql.item_pairs").fetchone()["n"] == 0
    # Counts and statistics are in already.
    assert conn.execute("SELECT count(*) AS n FROM recsql.user_item_events").fetchone()["n"] == 4

    assert conn.execute("SELECT recsql.fold_pairs() AS n").fetchone()["n"] == 4
    assert conn.execute("SELECT recsql.fold_pairs() AS n").fetchone()["n"] == 0
    assert (
        conn.execute("SELECT pending_pair_events FROM recsql.fold_status").fetchone()["pending_pair_events"]
        == 0
    )
    conn.execute("SELECT recsql.refresh_neighbors()")
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))

    for user, item in stream[4:]:
        conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (user, item))
    conn.execute("SELECT recsql.fold(defer_pairs => true)")
    assert conn.execute("SELECT count(*) AS n FROM recsql.pair_queue").fetchone()["n"] == 4  # four parts
    conn.execute("SELECT recsql.forget_user('u1')")
    assert conn.execute("SELECT count(*) AS n FROM recsql.pair_queue").fetchone()["n"] == 0
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))


def test_a_drain_sums_the_pairs_of_several_folds_and_takes_one_fold_as_queued(conn):
    """Adding queued pairs: two folds' rows repeat a pair and are summed; one fold's rows (one per
    part) are added as they are. Both come out as a rebuild makes them."""
    for fold_users in (["u1", "u2"], ["u3"]):
        for user in fold_users:
            for item in ("a", "b", "c"):
                api.track(conn, user, item, "view")
            conn.execute("SELECT recsql.fold(defer_pairs => true)")
        queued = conn.execute("SELECT count(*) AS n FROM recsql.pair_queue").fetchone()["n"]
        assert queued == 4 * len(fold_users)  # four parts per fold
        assert conn.execute("SELECT recsql.fold_pairs() AS n").fetchone()["n"] == 3 * len(fold_users)
    pairs = conn.execute("SELECT item_a, item_b, n FROM recsql.item_pairs WHERE kind = 'v'").fetchall()
    assert sorted(p["n"] for p in pairs) == [3, 3, 3]  # (a, b), (a, c), (b, c): once per user
    conn.execute("SELECT recsql.refresh_neighbors()")
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))


def _queue_three_folds(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE recsql.settings SET cooc_window = 4, purchase_window = 3")
    rng = random.Random(7)
    for _ in range(3):
        for _ in range(120):
            api.track(
                conn,
                f"u{rng.randrange(9)}",
                f"i{rng.randrange(25)}",
                rng.choice(["view", "view", "purchase"]),
            )
        row = conn.execute("SELECT recsql.fold(defer_pairs => true) AS n").fetchone()
        assert row is not None
        assert row["n"] == 120


def test_queued_pairs_come_in_four_parts_that_lock_apart(db_url, conn):
    """fold(defer_pairs) queues each fold's pairs in four parts by item_a modulo 4. While one part is
    being added, the others can be added beside it, whereas adding that part again, adding all pairs
    or refreshing lists step aside (without wait: at once); the events stay pending until all
    parts are in."""
    _queue_three_folds(conn)
    parts = conn.execute(
        "SELECT part, count(*) AS folds, sum(events) AS events, bool_and(items_a <@ ARRAY(SELECT x FROM"
        " generate_series(part, 100, 4) x)) AS modulo, sum(cardinality(items_a)) AS pairs"
        " FROM recsql.pair_queue GROUP BY part ORDER BY part"
    ).fetchall()
    assert [(h["part"], h["folds"], h["events"], h["modulo"]) for h in parts] == [
        (0, 3, 360, True),
        (1, 3, 360, True),
        (2, 3, 360, True),
        (3, 3, 360, True),
    ]
    assert all(h["pairs"] > 0 for h in parts)
    with psycopg.connect(db_url) as other:  # holds the locks of a session adding part 0
        other.execute(
            "SELECT pg_advisory_xact_lock_shared(recsql._pairs_lock_key()),"
            " pg_advisory_xact_lock(recsql._pair_part_lock_key(0))"
        )
        assert conn.execute("SELECT recsql.fold_pairs(0, wait => false) AS n").fetchone()["n"] == 0
        assert conn.execute("SELECT recsql.fold_pairs(wait => false) AS n").fetchone()["n"] == 0
        for part in (1, 2, 3):
            assert (
                conn.execute("SELECT recsql.fold_pairs(%s, wait => false) AS n", (part,)).fetchone()["n"]
                == 360
            )
        assert (
            conn.execute("SELECT pending_pair_events FROM recsql.fold_status").fetchone()[
                "pending_pair_events"
            ]
            == 360
        )
        conn.execute("DELETE FROM recsql.pair_queue")  # nothing queued: only the locks keep a refresher out
        assert conn.execute("SELECT count(*) AS n FROM recsql.neighbor_dirty").fetchone()["n"] > 0
        assert conn.execute("SELECT recsql.refresh_neighbors(wait => false) AS n").fetchone()["n"] == 0
        other.rollback()
    assert conn.execute("SELECT recsql.refresh_neighbors(wait => false) AS n").fetchone()["n"] > 0


def test_two_sessions_add_the_parts_side_by_side_exactly(db_url, conn):
    """Two sessions adding the parts at the same time, from either end (they mark the same lists: the
    second waits for the first to commit, no deadlock), leave the state a rebuild makes."""
    _queue_three_folds(conn)
    start = threading.Barrier(2)

    def add(parts: tuple[int, ...]) -> list[int]:
        with psycopg.connect(db_url, autocommit=True) as session:
            start.wait()
            added = []
            for part in parts:
                row = session.execute("SELECT recsql.fold_pairs(%s)", (part,)).fetchone()
                assert row is not None
                added.append(int(row[0]))
            return added

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(add, ((0, 1), (3, 2)))) == [[360, 360], [360, 360]]
    assert (
        conn.execute("SELECT pending_pair_events FROM recsql.fold_status").fetchone()["pending_pair_events"]
        == 0
    )
    conn.execute("SELECT recsql.refresh_neighbors()")
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))


def test_fold_pairs_names_its_parts(conn):
    for part in (-1, 4):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="part must be 0, 1, 2, 3 or null"):
            conn.execute("SELECT recsql.fold_pairs(%s)", (part,))


def test_a_backlog_folds_in_slices_of_max_events(conn):
    """fold(max_events) folds the oldest events first, cutting inside a statement if need be, and
    never claims (fold_state.horizon) a transaction it has not folded whole."""
    conn.execute("UPDATE recsql.settings SET cooc_window = 3")
    rows = [(f"u{i % 3}", f"i{i % 5}", "view") for i in range(10)]
    with conn.cursor() as cur, cur.copy("COPY recsql.events (user_id, item_id, event_type) FROM STDIN") as cp:
        for r in rows:
            cp.write_row(r)
    conn.execute("SELECT * FROM recsql.track('u9', 'i1', 'view')")  # a later transaction
    copy_xid = conn.execute("SELECT min(xid)::text AS x FROM recsql.events").fetchone()["x"]
    folded, pending = [], []
    while n := conn.execute("SELECT recsql.fold(max_events => 3) AS n").fetchone()["n"]:
        folded.append(n)
        status = conn.execute("SELECT pending_events FROM recsql.fold_status").fetchone()
        pending.append(status["pending_events"])
        horizon = conn.execute("SELECT horizon::text AS h FROM recsql.fold_state").fetchone()["h"]
        if sum(folded) < 10:
            assert int(horizon) <= int(copy_xid)  # the COPY is not folded whole yet
    assert folded == [3, 3, 3, 2]  # the last slice: the COPY's tenth event and the track call
    assert pending == [8, 5, 2, 0]
    assert conn.execute("SELECT count(*) AS n FROM recsql.event_inbox").fetchone()["n"] == 0
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="max_events must be at least 1"):
        conn.execute("SELECT recsql.fold(max_events => 0)")


def test_fold_boundaries_do_not_change_pairs(conn):
    """The same stream folded event by event or all at once gives identical pairs."""
    conn.execute("UPDATE recsql.settings SET cooc_window = 2")
    stream = [("u1", "a"), ("u1", "b"), ("u1", "c"), ("u1", "a"), ("u1", "d"), ("u2", "b"), ("u2", "d")]
    for user, item in stream:
        conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (user, item))
        conn.execute("SELECT recsql.flush()")
    pairs = conn.execute(
        "SELECT a.item_id AS a, b.item_id AS b, p.n FROM recsql.item_pairs p"
        " JOIN recsql.items a ON a.item_key = p.item_a JOIN recsql.items b ON b.item_key = p.item_b"
        " WHERE p.kind = 'v' AND a.item_id < b.item_id ORDER BY 1, 2"
    ).fetchall()
    # Window 2: b pairs a; c pairs a, b; a (window b, c) pairs b, c; d (window c, a) pairs c, a; u2's d pairs b.
    assert [(r["a"], r["b"], r["n"]) for r in pairs] == [
        ("a", "b", 2),
        ("a", "c", 2),
        ("a", "d", 1),
        ("b", "c", 1),
        ("b", "d", 1),
        ("c", "d", 1),
    ]
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))


def _reference_pairs(
    stream: list[tuple[str, str, str]],
    kinds: dict[str, tuple[bool, bool]],
    window: int | list[int],
    purchase_window: int | list[int],
    history: dict[tuple[str, str], list[str]] | None = None,
) -> dict[tuple[str, str, str], int]:
    """Pair counts by the definition, in Python: in arrival order, each event pairs once with every
    distinct item among the user's previous ``window`` pair-forming events (kind v; conversions and
    ``purchase_window`` for kind p), unless its own item is among them. A window may be given per
    event (settings changed along the stream); ``history`` receives every user's items by kind."""
    counts: dict[tuple[str, str, str], int] = {}
    history = {} if history is None else history
    for k, (user, item, event_type) in enumerate(stream):
        forms, converts = kinds[event_type]
        sizes = (
            window if isinstance(window, int) else window[k],
            purchase_window if isinstance(purchase_window, int) else purchase_window[k],
        )
        for kind, member, size in (("v", forms, sizes[0]), ("p", converts, sizes[1])):
            if not member:
                continue
            seen = history.setdefault((kind, user), [])
            recent = seen[-size:]
            if item not in recent:
                for other in set(recent):
                    key = (kind, min(item, other), max(item, other))
                    counts[key] = counts.get(key, 0) + 1
            seen.append(item)
    return counts


def _stored_pairs(conn: psycopg.Connection[Any]) -> dict[tuple[str, str, str], int]:
    rows = conn.execute(
        "SELECT p.kind, a.item_id AS a, b.item_id AS b, p.n FROM recsql.item_pairs p"
        " JOIN recsql.items a ON a.item_key = p.item_a JOIN recsql.items b ON b.item_key = p.item_b"
    ).fetchall()
    return {(r["kind"], min(r["a"], r["b"]), max(r["a"], r["b"])): r["n"] for r in rows}


def _stored_windows(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], list[str]]:
    """recsql.user_windows with item ids, by (kind, user); empty windows left out."""
    out: dict[tuple[str, str], list[str]] = {}
    for r in conn.execute(
        "SELECT w.user_id, k.kind, array(SELECT i.item_id FROM unnest(k.keys) WITH ORDINALITY x(key, pos)"
        " JOIN recsql.items i ON i.item_key = x.key ORDER BY x.pos) AS items"
        " FROM recsql.user_windows w"
        " CROSS JOIN LATERAL (VALUES ('v', w.items), ('p', w.conversions)) k(kind, keys)"
        " WHERE cardinality(k.keys) > 0"
    ):
        out[(r["kind"], r["user_id"])] = r["items"]
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stream=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2"]),
            # Few items, so that windows often hold the same item more than once.
            st.sampled_from(["a", "b", "c", "d"]),
            st.sampled_from(["view", "view", "click", "add_to_cart", "purchase", "purchase"]),
        ),
        min_size=1,
        max_size=30,
    ),
    window=st.integers(min_value=1, max_value=5),
    purchase_window=st.integers(min_value=1, max_value=4),
    cut=st.integers(min_value=1, max_value=30),
)
def test_pairs_match_the_definition_with_repeats_in_the_window(conn, stream, window, purchase_window, cut):
    """Pair counts checked against an independent model of the definition, not only against a rebuild
    (which shares the SQL that forms pairs); folded in two parts, so windows span a fold boundary."""
    reset(conn)
    conn.execute(
        "UPDATE recsql.settings SET cooc_window = %s, purchase_window = %s", (window, purchase_window)
    )
    kinds = {
        r["name"]: (r["forms_pairs"], r["is_conversion"])
        for r in conn.execute("SELECT name, forms_pairs, is_conversion FROM recsql.event_types")
    }
    for k, (user, item, event_type) in enumerate(stream):
        conn.execute("SELECT * FROM recsql.track(%s, %s, %s)", (user, item, event_type))
        if k + 1 == cut:
            conn.execute("SELECT recsql.fold(defer_pairs => true)")
    conn.execute("SELECT recsql.flush()")
    history: dict[tuple[str, str], list[str]] = {}
    assert _stored_pairs(conn) == _reference_pairs(stream, kinds, window, purchase_window, history)
    # The windows the next events will pair with: each user's last items of each kind.
    sizes = {"v": window, "p": purchase_window}
    assert _stored_windows(conn) == {key: seen[-sizes[key[0]] :] for key, seen in history.items() if seen}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stream=st.lists(
        st.tuples(
            st.sampled_from(["u1", "u2", "u3"]),
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.sampled_from(["view", "click", "add_to_cart", "purchase"]),
        ),
        min_size=2,
        max_size=30,
    ),
    before=st.tuples(st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=3)),
    after=st.tuples(st.integers(min_value=1, max_value=6), st.integers(min_value=1, max_value=4)),
    cut=st.integers(min_value=1, max_value=29),
)
def test_changed_windows_pair_later_events_with_the_new_length(conn, stream, before, after, cut):
    """Windows kept per user (recsql.user_windows) were built with the old settings: after a change,
    the next events pair over the new length of their user's history, read again from the log."""
    reset(conn)
    conn.execute("UPDATE recsql.settings SET cooc_window = %s, purchase_window = %s", before)
    kinds = {
        r["name"]: (r["forms_pairs"], r["is_conversion"])
        for r in conn.execute("SELECT name, forms_pairs, is_conversion FROM recsql.event_types")
    }
    cut = min(cut, len(stream) - 1)
    for k, (user, item, event_type) in enumerate(stream):
        if k == cut:
            conn.execute("SELECT recsql.flush()")
            conn.execute("UPDATE recsql.settings SET cooc_window = %s, purchase_window = %s", after)
        conn.execute("SELECT * FROM recsql.track(%s, %s, %s)", (user, item, event_type))
    conn.execute("SELECT recsql.flush()")
    windows = [before[0]] * cut + [after[0]] * (len(stream) - cut)
    purchase_windows = [before[1]] * cut + [after[1]] * (len(stream) - cut)
    assert _stored_pairs(conn) == _reference_pairs(stream, kinds, windows, purchase_windows)


def test_windows_follow_event_type_changes_and_forgetting(conn):
    """A type that stops forming pairs leaves the stored windows, which are read from the log again;
    forgetting a user removes their windows."""
    for item in ("a", "b", "c"):
        conn.execute("SELECT * FROM recsql.track('u1', %s, 'view')", (item,))
        conn.execute("SELECT * FROM recsql.track('u2', %s, 'view')", (item,))
    conn.execute("SELECT * FROM recsql.track('u1', 'd', 'click')")
    conn.execute("SELECT recsql.flush()")
    assert _stored_windows(conn)[("v", "u1")] == ["a", "b", "c", "d"]

    conn.execute("UPDATE recsql.event_types SET forms_pairs = false WHERE name = 'click'")
    conn.execute("SELECT * FROM recsql.track('u1', 'e', 'view')")
    conn.execute("SELECT recsql.flush()")
    # e paired with a, b and c (views), not with d (a click, which no longer forms pairs).
    pairs = _stored_pairs(conn)
    assert {k for k in pairs if "e" in k[1:]} == {("v", "a", "e"), ("v", "b", "e"), ("v", "c", "e")}
    assert ("v", "d", "e") not in pairs
    assert _stored_windows(conn)[("v", "u1")] == ["a", "b", "c", "e"]
    # u2 had no event since: its windows are read from the log when it has one.
    assert ("v", "u2") not in _stored_windows(conn)

    conn.execute("SELECT recsql.forget_user('u1')")
    assert [k for k in _stored_windows(conn) if k[1] == "u1"] == []


def test_repeated_views_do_not_inflate_pairs(conn):
    for _ in range(50):
        conn.execute("SELECT * FROM recsql.track('u1', 'a', 'view')")
        conn.execute("SELECT * FROM recsql.track('u1', 'b', 'view')")
    conn.execute("SELECT recsql.flush()")
    row = conn.execute(
        "SELECT max(n) AS n FROM recsql.item_pairs p JOIN recsql.items a ON a.item_key = p.item_a"
        " WHERE a.item_id = 'a' AND p.kind = 'v'"
    ).fetchone()
    assert row["n"] == 1
    strength = conn.execute(
        "SELECT strength FROM recsql.user_items WHERE user_id = 'u1' AND item_id = 'a'"
    ).fetchone()["strength"]
    # 50 views weigh log2(51) ~ 5.7, not 50.
    assert 5 < strength < 6


def test_maintain_expires_old_formations_exactly(conn):
    old = NOW - timedelta(days=300)
    for user in ("u1", "u2"):
        for i, item in enumerate(("a", "b", "c")):
            conn.execute(
                "SELECT * FROM recsql.track(%s, %s, 'view', %s)", (user, item, old + timedelta(minutes=i))
            )
    conn.execute("SELECT * FROM recsql.track('u1', 'd', 'view')")
    conn.execute("SELECT recsql.flush()")
    before = conn.execute("SELECT count(*) AS n FROM recsql.item_pairs").fetchone()["n"]
    result = conn.execute("SELECT * FROM recsql.maintain()").fetchone()
    after = conn.execute("SELECT count(*) AS n FROM recsql.item_pairs").fetchone()["n"]
    # Only the fresh event's pairs (d with a, b, c; each stored once) survive the 180-day retention.
    assert before > after == 3
    assert result["pair_rows"] == 3
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))


def test_neighbor_lists_after_full_refresh_equal_rebuild(conn):
    """Lists are a serving index: once all are queued again, a flush makes them equal a rebuild's."""
    conn.execute("UPDATE recsql.settings SET cooc_window = 3, neighbors_per_item = 2")
    for user, items in {"u1": "abcd", "u2": "bcde", "u3": "acef", "u4": "ab"}.items():
        for item in items:
            conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (user, item))
        conn.execute("SELECT recsql.flush()")
    conn.execute("SELECT recsql.mark_all_neighbors()")
    conn.execute("SELECT recsql.flush()")
    query = "SELECT kind, item_key, neighbors, scores, together FROM recsql.neighbor_lists ORDER BY 1, 2"
    incremental = conn.execute(query).fetchall()
    conn.execute("SELECT recsql.rebuild()")
    assert conn.execute(query).fetchall() == incremental
    assert len(incremental) == 6 and all(len(r["neighbors"]) <= 2 for r in incremental)
    assert conn.execute("SELECT count(*) AS n FROM recsql.neighbor_dirty").fetchone()["n"] == 0


def test_refreshers_run_side_by_side_on_disjoint_lists(db_url, conn):
    """Two sessions refresh lists at once (the worker's two lanes when idle), each taking lists the
    other has not; adding pairs waits for both. The lists come out as one refresh makes them."""
    conn.execute("UPDATE recsql.settings SET cooc_window = 4, neighbors_per_item = 3")
    for user in range(4):
        for item in range(12):
            conn.execute(
                "SELECT * FROM recsql.track(%s, %s, 'view')", (f"u{user}", f"i{(item * (user + 1)) % 12}")
            )
    conn.execute("SELECT recsql.flush()")
    conn.execute("SELECT recsql.mark_all_neighbors()")
    dirty = conn.execute("SELECT count(*) AS n FROM recsql.neighbor_dirty").fetchone()["n"]
    assert dirty >= 12

    # Queued pairs: adding them must wait for the refreshers.
    conn.execute("SELECT * FROM recsql.track('u0', 'i5', 'view')")
    conn.execute("SELECT recsql.fold(defer_pairs => true)")
    # The fold lane's helping hand stands aside while pairs wait to be added.
    assert api.refresh_neighbors(conn, 5, wait=False) == 0
    conn.execute("SET lock_timeout = '2s'")
    with psycopg.connect(db_url) as other:  # a transaction left open: its lists stay locked
        row = other.execute("SELECT recsql.refresh_neighbors(5)").fetchone()
        assert row is not None
        assert row[0] == 5
        assert conn.execute("SELECT recsql.refresh_neighbors(5) AS n").fetchone()["n"] == 5
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("SELECT recsql.fold_pairs()")
        other.commit()
    assert conn.execute("SELECT count(*) AS n FROM recsql.neighbor_dirty").fetchone()["n"] == dirty - 10
    conn.execute("SELECT recsql.refresh_neighbors()")

    query = "SELECT kind, item_key, neighbors, scores, together FROM recsql.neighbor_lists ORDER BY 1, 2"
    side_by_side = conn.execute(query).fetchall()
    with conn.transaction(force_rollback=True):  # every list again in one refresh, same pairs
        conn.execute("SELECT recsql.mark_all_neighbors()")
        conn.execute("SELECT recsql.refresh_neighbors()")
        assert conn.execute(query).fetchall() == side_by_side
    assert conn.execute("SELECT recsql.fold_pairs() AS n").fetchone()["n"] == 1
    assert api.refresh_neighbors(conn, wait=False) > 0  # the lists the added pairs changed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.integers(0, 7), st.integers(0, 11)), min_size=1, max_size=12),
        min_size=1,
        max_size=6,
    ),
    length=st.integers(min_value=1, max_value=4),
    similarity=st.sampled_from(["cosine", "jaccard", "count"]),
)
def test_pruned_list_refresh_equals_full_recompute(conn, rounds, length, similarity):
    """Refreshing with the old list's floor as a bound gives the same lists as computing from scratch."""
    reset(conn)
    conn.execute("TRUNCATE recsql.neighbor_lists, recsql.neighbor_dirty")
    conn.execute(
        "UPDATE recsql.settings SET cooc_window = 3, neighbors_per_item = %s, similarity = %s",
        (length, similarity),
    )
    for events in rounds:
        for user, item in events:
            conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (f"u{user}", f"i{item}"))
        conn.execute("SELECT recsql.flush()")
    conn.execute("SELECT recsql.mark_all_neighbors()")
    conn.execute("SELECT recsql.refresh_neighbors()")
    query = "SELECT kind, item_key, neighbors, scores, together FROM recsql.neighbor_lists ORDER BY 1, 2"
    pruned = conn.execute(query).fetchall()
    conn.execute("SELECT recsql.rebuild()")
    assert conn.execute(query).fetchall() == pruned


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.integers(0, 4), st.integers(0, 7)), min_size=1, max_size=10),
        min_size=1,
        max_size=6,
    ),
    length=st.integers(min_value=1, max_value=4),
    similarity=st.sampled_from(["cosine", "jaccard", "count"]),
)
def test_patched_lists_equal_full_recompute(conn, rounds, length, similarity):
    """Lists patched with the partners whose counts went up equal lists computed from every pair.

    Every user has seen every item first, so later views only raise pair counts and no item's user
    count moves (user counts drifting under a patched list is the one documented difference).
    """
    reset(conn)
    conn.execute("TRUNCATE recsql.neighbor_lists, recsql.neighbor_dirty")
    conn.execute(
        "UPDATE recsql.settings SET cooc_window = 3, neighbors_per_item = %s, similarity = %s",
        (length, similarity),
    )
    for user in range(5):
        for item in range(8):
            conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (f"u{user}", f"i{item}"))
    conn.execute("SELECT recsql.flush()")
    whole = "SELECT count(*) AS n FROM recsql.neighbor_dirty WHERE partners IS NULL"
    for events in rounds:
        for user, item in events:
            conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (f"u{user}", f"i{item}"))
        conn.execute("SELECT recsql.fold()")
        assert conn.execute(whole).fetchone()["n"] == 0  # every list exists: patches only
        conn.execute("SELECT recsql.refresh_neighbors()")
    query = "SELECT kind, item_key, neighbors, scores, together FROM recsql.neighbor_lists ORDER BY 1, 2"
    incremental = conn.execute(query).fetchall()
    conn.execute("SELECT recsql.rebuild()")
    assert conn.execute(query).fetchall() == incremental


def test_a_patch_is_replaced_by_a_whole_recompute_when_asked(conn):
    """mark_all_neighbors() and maintain() turn a pending patch into a whole recompute."""
    conn.execute("UPDATE recsql.settings SET cooc_window = 2, neighbors_per_item = 5")
    for user in ("u1", "u2"):
        for item in "abc":
            conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (user, item))
    conn.execute("SELECT recsql.flush()")
    conn.execute("SELECT * FROM recsql.track('u1', 'a', 'view')")  # a meets b and c again
    conn.execute("SELECT recsql.fold()")
    pending = "SELECT count(*) FILTER (WHERE partners IS NOT NULL) AS patches, count(*) AS n FROM recsql.neighbor_dirty"
    before = conn.execute(pending).fetchone()
    assert before["patches"] > 0
    conn.execute("SELECT recsql.mark_all_neighbors()")
    after = conn.execute(pending).fetchone()
    assert after["patches"] == 0 and after["n"] >= before["n"]


def test_list_refresh_falls_back_when_the_old_floor_no_longer_holds(conn):
    """The top neighbour loses its lead when its own audience grows; the pruned refresh must notice."""
    conn.execute("UPDATE recsql.settings SET cooc_window = 1, neighbors_per_item = 1")

    def session(user: str, *items: str) -> None:
        for item in items:
            conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (user, item))

    for i in range(4):
        session(f"u{i}", "a", "b")  # b's only users: cosine(a, b) = 1, a full list with floor 1
    conn.execute("SELECT recsql.flush()")
    assert [r["item_id"] for r in conn.execute("SELECT * FROM recsql.similar_items('a', 1)")] == ["b"]
    for i in range(40):
        session(f"fan{i}", "b")  # b gets a huge audience of its own: cosine(a, b) drops to 0.27
    # a's pairs change, so its list is refreshed; the floor (1) bounds pairs to n >= 2, which
    # leaves only b, now below the floor: the refresh must rescan and find d (cosine 0.45).
    session("u9", "a", "d")
    conn.execute("SELECT recsql.flush()")
    refreshed = [r["item_id"] for r in conn.execute("SELECT * FROM recsql.similar_items('a', 1)")]
    conn.execute("SELECT recsql.rebuild()")
    assert refreshed == [r["item_id"] for r in conn.execute("SELECT * FROM recsql.similar_items('a', 1)")]
    assert refreshed == ["d"]


def test_maintain_queues_lists_not_refreshed_for_a_day(conn):
    for user in ("u1", "u2"):
        for item in "abc":
            conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (user, item))
    conn.execute("SELECT recsql.flush()")
    conn.execute(
        "UPDATE recsql.neighbor_lists SET refreshed_at = now() - interval '2 days' WHERE item_key IN"
        " (SELECT item_key FROM recsql.items WHERE item_id = 'a')"
    )
    conn.execute("SELECT * FROM recsql.maintain()")
    queued = conn.execute(
        "SELECT i.item_id FROM recsql.neighbor_dirty d JOIN recsql.items i USING (item_key) ORDER BY 1"
    ).fetchall()
    assert [r["item_id"] for r in queued] == ["a"]
