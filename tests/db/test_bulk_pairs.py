"""A bulk of pairs is added without item_pairs' index by partner (item_b), which the first refresh
after the bulk builds again (migration 0017): the state and the lists are those of a load that kept
the index, nothing waits for the drop, and a model state's copy drops only its own index."""

from __future__ import annotations

import random
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from recsql import api
from recsql.errors import RecsqlError

from .helpers import assert_same_state, snapshot

# Below the default (50,000 deltas in one merge), so that a test-sized bulk drops the index. A merge
# takes the bulk path from 10,001 deltas on; a fold of 12,000 events below queues about 60,000, about
# 15,000 in each of the four parts.
DROP_ROWS = 1000

Conn = psycopg.Connection[dict[str, Any]]


def _events(conn: Conn, n: int, seed: int, users: int = 400, items: int = 400) -> None:
    rng = random.Random(seed)
    kinds = ["view", "view", "view", "add_to_cart", "purchase"]
    with conn.cursor().copy("COPY recsql.events (user_id, item_id, event_type) FROM STDIN") as copy:
        for _ in range(n):
            copy.write_row((f"u{rng.randrange(users)}", f"i{rng.randrange(items)}", rng.choice(kinds)))


def _indexed(conn: Conn, schema: str = "recsql") -> bool:
    row = conn.execute(
        sql.SQL("SELECT {}._pair_b_index() IS NOT NULL AS ok").format(sql.Identifier(schema))
    ).fetchone()
    return bool(row and row["ok"])


def _count(conn: Conn, table: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) AS n FROM recsql.{}").format(sql.Identifier(table))
    ).fetchone()
    assert row is not None
    return int(row["n"])


def _index_def(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'recsql' AND tablename = 'item_pairs' ORDER BY 1"
    ).fetchall()
    return [r["indexdef"] for r in rows]


def _lists(conn: Conn) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT kind, item_key, neighbors, scores, together FROM recsql.neighbor_lists ORDER BY 1, 2"
    ).fetchall()
    return [
        (r["kind"], r["item_key"], tuple(r["neighbors"]), tuple(r["scores"]), tuple(r["together"]))
        for r in rows
    ]


@pytest.fixture
def bulk(conn: Conn) -> Conn:
    """A session whose merges of DROP_ROWS or more pair deltas drop the index (the setting)."""
    conn.execute(f"SET recsql.pair_index_drop_rows = {DROP_ROWS}")
    return conn


def test_a_bulk_is_added_without_the_index_and_the_refresh_after_builds_it(bulk: Conn) -> None:
    schema_index = _index_def(bulk)
    _events(bulk, 12_000, seed=1)
    assert api.fold(bulk, defer_pairs=True) == 12_000
    api.fold_pairs(bulk)
    assert not _indexed(bulk), "a merge of a bulk of pairs keeps the index"
    assert _count(bulk, "neighbor_dirty") > 0

    api.refresh_neighbors(bulk)
    assert _indexed(bulk) and _index_def(bulk) == schema_index
    incremental, lists = snapshot(bulk), _lists(bulk)

    # The same events with the index kept throughout (no merge reaches the default size).
    bulk.execute("RESET recsql.pair_index_drop_rows")
    api.rebuild(bulk)
    assert _indexed(bulk)
    assert_same_state(incremental, snapshot(bulk))
    assert lists == _lists(bulk)


def test_small_merges_keep_the_index(conn: Conn) -> None:
    _events(conn, 12_000, seed=2)
    api.fold(conn, defer_pairs=True)
    for part in range(4):  # bulk merges (about 15,000 deltas each) under the default 50,000
        api.fold_pairs(conn, part)
    assert _indexed(conn)
    assert _count(conn, "pair_queue") == 0


def test_the_index_waits_for_the_end_of_a_backlog_and_lists_are_right_without_it(bulk: Conn) -> None:
    _events(bulk, 12_000, seed=3)
    api.fold(bulk, defer_pairs=True)
    api.fold_pairs(bulk)
    assert not _indexed(bulk)
    # A backlog of events waits for folding: refresh rounds, small ones too, go on without the index.
    _events(bulk, 10_000, seed=4)
    refreshed = sum(api.refresh_neighbors(bulk, 100) for _ in range(3))  # of about 800 due
    assert refreshed == 300 and not _indexed(bulk)
    api.refresh_neighbors(bulk)
    assert not _indexed(bulk)
    without = _lists(bulk)

    bulk.execute("BEGIN")
    try:  # the same lists, recomputed with the index
        bulk.execute("CREATE INDEX item_pairs_b_idx ON recsql.item_pairs (item_b, kind)")
        bulk.execute("SELECT recsql.mark_all_neighbors()")
        bulk.execute("SELECT recsql.refresh_neighbors()")
        assert _lists(bulk) == without
    finally:
        bulk.execute("ROLLBACK")

    api.flush(bulk)  # folds the backlog (a bulk again), then its refresh builds the index
    assert _indexed(bulk)


def test_no_one_waits_for_the_drop(bulk: Conn, db_url: str) -> None:
    _events(bulk, 12_000, seed=5)
    api.fold(bulk, defer_pairs=True)
    with psycopg.connect(db_url) as reader:
        reader.execute("SELECT count(*) FROM recsql.item_pairs")  # holds a lock on it until rollback
        api.fold_pairs(bulk)  # does not wait for the reader: adds the pairs with the index
        assert _indexed(bulk)
        reader.rollback()
    assert _count(bulk, "pair_queue") == 0


def test_a_model_state_drops_and_builds_only_its_own_index(bulk: Conn) -> None:
    _events(bulk, 3000, seed=6)
    api.flush(bulk)
    bulk.execute(
        "INSERT INTO recsql.models (name, params) VALUES ('wide', recsql.check_params(%s))",
        ('{"cooc_window": 30}',),
    )
    state = api.build_model_state(bulk, "wide")
    schema = str(state["schema_name"])
    assert _indexed(bulk, schema) and _indexed(bulk)

    bulk.execute(sql.SQL("SELECT {}._drop_pair_b_index(1000000)").format(sql.Identifier(schema)))
    assert not _indexed(bulk, schema) and _indexed(bulk)
    bulk.execute(sql.SQL("SELECT {}.mark_all_neighbors()").format(sql.Identifier(schema)))
    bulk.execute(sql.SQL("SELECT {}.refresh_neighbors()").format(sql.Identifier(schema)))
    assert _indexed(bulk, schema)


def test_a_role_that_does_not_own_the_pairs_adds_them_with_the_index(bulk: Conn, db_url: str) -> None:
    role = sql.Identifier(f"recsql_t_writer_{uuid.uuid4().hex[:8]}")
    for grant in (
        "CREATE ROLE {}",
        "GRANT USAGE ON SCHEMA recsql TO {}",
        "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA recsql TO {}",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA recsql TO {}",
    ):
        bulk.execute(sql.SQL(grant).format(role))
    try:
        _events(bulk, 12_000, seed=7)
        with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as writer:
            writer.execute(f"SET recsql.pair_index_drop_rows = {DROP_ROWS}")
            writer.execute(sql.SQL("SET ROLE {}").format(role))
            api.fold(writer, defer_pairs=True)
            api.fold_pairs(writer)  # may not drop the index: adds the pairs with it
            assert _indexed(writer) and _count(writer, "pair_queue") == 0

            bulk.execute("DROP INDEX recsql.item_pairs_b_idx")  # as a bulk by the owner would
            api.refresh_neighbors(writer)  # may not build it: refreshes without it
            assert not _indexed(writer) and _count(writer, "neighbor_dirty") == 0
        bulk.execute("SELECT recsql.mark_all_neighbors()")
        api.refresh_neighbors(bulk)
        assert _indexed(bulk)
    finally:
        bulk.execute(sql.SQL("DROP OWNED BY {}").format(role))
        bulk.execute(sql.SQL("DROP ROLE {}").format(role))


def test_a_bad_setting_is_refused_and_the_pairs_stay_queued(conn: Conn) -> None:
    _events(conn, 12_000, seed=8)
    api.fold(conn, defer_pairs=True)
    conn.execute("SET recsql.pair_index_drop_rows = 'lots'")
    with pytest.raises(RecsqlError, match='pair_index_drop_rows must be a number of pair deltas, got "lots"'):
        api.fold_pairs(conn)
    assert _count(conn, "pair_queue") == 4 and _count(conn, "item_pairs") == 0 and _indexed(conn)
    conn.execute("RESET recsql.pair_index_drop_rows")
    api.fold_pairs(conn)  # about 60,000 deltas at once: over the default, so without the index
    api.refresh_neighbors(conn)
    assert _count(conn, "pair_queue") == 0 and _count(conn, "neighbor_dirty") == 0 and _indexed(conn)
