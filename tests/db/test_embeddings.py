"""Embeddings with real commits: the worker's queue, freshness, sharing, crashes, and the queries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import psycopg
import pytest

from recsql import api
from recsql.embeddings import store, text
from recsql.embeddings.worker import Embedder

TEXT_MISSING = text.unavailable_reason()
# CI sets RECSQL_REQUIRE_TEXT=1: there a missing text extra fails these tests instead of skipping them.
TEXT_REQUIRED = os.environ.get("RECSQL_REQUIRE_TEXT") == "1"
needs_text = pytest.mark.skipif(TEXT_MISSING is not None and not TEXT_REQUIRED, reason=TEXT_MISSING or "")

SHOES = [
    ("run-red", "Red running shoes", "shoes"),
    ("run-blue", "Blue running shoes for jogging", "shoes"),
    ("trail", "Trail running sneakers", "shoes"),
    ("pan", "Cast iron frying pan", "kitchen"),
    ("pot", "Stainless steel cooking pot", "kitchen"),
    ("kettle", "Electric kettle for the kitchen", "kitchen"),
]


@pytest.fixture(scope="module")
def encoder():
    if TEXT_MISSING is not None:
        (pytest.fail if TEXT_REQUIRED else pytest.skip)(TEXT_MISSING)
    return text.TextEncoder(threads=1)


def _insert_items(conn, rows):
    with conn.transaction():
        for item_id, title, category in rows:
            conn.execute(
                "INSERT INTO recsql.items (item_id, title, category) VALUES (%s, %s, %s)",
                (item_id, title, category),
            )


def _wait(predicate, timeout=30.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def _count(conn, space="text"):
    return conn.execute(
        "SELECT count(*) AS n FROM recsql.item_embeddings WHERE space = %s", (space,)
    ).fetchone()["n"]


@needs_text
def test_new_item_gets_a_text_vector_and_similar_items_at_once(db_url, conn, encoder):
    worker = Embedder(db_url, spaces=("text",), encoder=encoder, idle_s=5.0)
    worker.start_thread()
    try:
        time.sleep(0.3)  # the worker is idle, waiting on LISTEN (idle_s is 5 s: only NOTIFY wakes it fast)
        started = time.monotonic()
        _insert_items(conn, SHOES)
        assert _wait(lambda: _count(conn) == len(SHOES), timeout=10)
        elapsed = time.monotonic() - started
    finally:
        worker.stop()
    assert elapsed < 2.0, f"{elapsed:.2f} s from commit to vectors"
    # No events at all: similar items come from the text space alone.
    similar = [r["item_id"] for r in api.similar_items(conn, "run-red", 2)]
    assert set(similar) == {"run-blue", "trail"}
    kitchen = [r["item_id"] for r in api.similar_items(conn, "pan", 2)]
    assert set(kitchen) == {"pot", "kettle"}
    assert conn.execute("SELECT count(*) AS n FROM recsql.embedding_queue").fetchone()["n"] == 0


@needs_text
def test_edited_title_is_embedded_again_and_unchanged_text_is_not(db_url, conn, encoder):
    _insert_items(conn, SHOES[:2])
    worker = Embedder(db_url, spaces=("text",), encoder=encoder)
    assert worker.round(conn) == 2
    conn.execute("UPDATE recsql.items SET in_stock = false WHERE item_id = 'run-red'")  # not text: not queued
    conn.execute("UPDATE recsql.items SET title = title WHERE item_id = 'run-blue'")  # same text: not queued
    assert worker.round(conn) == 0
    conn.execute("UPDATE recsql.items SET title = 'Cast iron skillet' WHERE item_id = 'run-red'")
    assert worker.round(conn) == 1
    rows = conn.execute(
        "SELECT i.item_id, e.writes FROM recsql.item_embeddings e JOIN recsql.items i USING (item_key) ORDER BY 1"
    ).fetchall()
    assert [(r["item_id"], r["writes"]) for r in rows] == [("run-blue", 1), ("run-red", 2)]


@needs_text
def test_two_workers_share_the_queue_without_double_work(db_url, conn, encoder):
    _insert_items(conn, [(f"i{n}", f"Product number {n} in a long catalog", f"c{n % 7}") for n in range(400)])
    workers = [Embedder(db_url, spaces=("text",), encoder=encoder, batch=16) for _ in range(2)]
    for w in workers:
        w.start_thread()
    try:
        assert _wait(lambda: _count(conn) == 400, timeout=120)
    finally:
        for w in workers:
            w.stop()
    assert all(w.embedded["text"] > 0 for w in workers), [w.embedded for w in workers]
    assert sum(w.embedded["text"] for w in workers) == 400
    assert conn.execute("SELECT max(writes) AS m FROM recsql.item_embeddings").fetchone()["m"] == 1


@needs_text
def test_a_worker_killed_mid_batch_loses_nothing(db_url, conn):
    _insert_items(conn, [(f"k{n}", f"Item {n}: a lamp, a chair or a table", "home") for n in range(600)])
    env = {**os.environ, "RECSQL_DATABASE_URL": db_url}
    cmd = [sys.executable, "-m", "recsql", "worker", "--no-fold", "--spaces", "text"]
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert _wait(lambda: _count(conn) >= 64, timeout=120), "the first worker never wrote a batch"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no clean shutdown: a batch may be half done
        first.wait()
    assert _count(conn) < 600, "the first worker finished before it could be killed"
    second = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        assert _wait(lambda: _count(conn) == 600, timeout=180)
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
    assert conn.execute("SELECT max(writes) AS m FROM recsql.item_embeddings").fetchone()["m"] == 1
    assert conn.execute("SELECT count(*) AS n FROM recsql.embedding_queue").fetchone()["n"] == 0


def test_without_the_text_extra_the_worker_says_so_and_behaviour_still_works(
    db_url, conn, monkeypatch, caplog
):
    monkeypatch.setattr(
        text,
        "unavailable_reason",
        lambda: "the text space is disabled: install it with pip install 'recsql[text]'",
    )
    worker = Embedder(db_url)
    with caplog.at_level("WARNING", logger="recsql.embeddings"):
        worker._prepare_text()
    assert "recsql[text]" in (worker.text_disabled or "")
    assert "recsql[text]" in caplog.text
    _seed_clusters(conn)
    assert worker.round(conn) > 0  # the behaviour space is fitted regardless
    assert _count(conn, "behavior") > 0 and _count(conn, "text") == 0


def _seed_clusters(conn, users=40, seed=3):
    """Three groups of items that users browse within a group: co-occurrence knows the groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        group = u % 3
        for _ in range(12):
            rows.append((f"u{u}", f"g{group}-{rng.integers(0, 10)}", "view"))
    with conn.transaction():
        for user, item, kind in rows:
            conn.execute("SELECT * FROM recsql.track(%s, %s, %s)", (user, item, kind))
    api.flush(conn)


def _vector(conn, item_id, space="behavior"):
    row = conn.execute(
        "SELECT e.embedding::text AS v, e.writes FROM recsql.item_embeddings e JOIN recsql.items i USING (item_key)"
        " WHERE e.space = %s AND i.item_id = %s",
        (space, item_id),
    ).fetchone()
    return (store.parse_vector(row["v"]), row["writes"]) if row else (None, 0)


def test_behaviour_vectors_follow_interactions(db_url, conn):
    _seed_clusters(conn)
    worker = Embedder(db_url, spaces=("behavior",))
    worker.round(conn)
    before, writes = _vector(conn, "g0-1")
    assert before is not None and writes == 1
    # The nearest behaviour neighbours of a group-0 item are group-0 items.
    near = [r["item_id"] for r in api.similar_items(conn, "g0-1", 5, method="embedding")]
    assert near and all(item.startswith("g0-") for item in near), near
    # Now many users take g0-1 together with group-2 items: enough new interactions to refresh it.
    with conn.transaction():
        for u in range(60):
            for item in ("g0-1", "g2-3", "g2-4", "g2-5"):
                conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (f"n{u}", item))
    api.flush(conn)
    worker._last_behavior_check = 0
    worker.round(conn)
    after, writes = _vector(conn, "g0-1")
    assert writes == 2
    assert float(np.dot(before, after)) < 0.99
    g2, _ = _vector(conn, "g2-3")
    assert float(np.dot(after, g2)) > float(np.dot(before, g2))


def test_hybrid_recommendations_blend_and_weight_zero_is_cooccurrence(db_url, conn):
    _seed_clusters(conn)
    Embedder(db_url, spaces=("behavior",)).round(conn)
    api.track(conn, "me", "g1-2", "view")
    conn.execute("UPDATE recsql.settings SET embedding_weight = 0")
    pure = api.recommend(conn, "me", 5)
    conn.execute("UPDATE recsql.settings SET embedding_weight = 0.5")
    hybrid = api.recommend(conn, "me", 5)
    assert all(r["item_id"].startswith("g1-") for r in hybrid), hybrid
    assert [r["item_id"] for r in pure] != [] and all(r["reason"].startswith("similar to") for r in pure)
    assert all(0 < r["score"] <= 1 for r in hybrid)  # blended scores are on a 0..1 scale
    with pytest.raises(Exception, match="method must be"):
        api.similar_items(conn, "g1-2", 5, method="magic")


def test_analyst_nearest_neighbour_query_uses_the_hnsw_index(conn):
    rng = np.random.default_rng(0)
    with conn.transaction():
        conn.execute("INSERT INTO recsql.items (item_id) SELECT 'v' || g FROM generate_series(1, 2000) g")
        keys = [r["item_key"] for r in conn.execute("SELECT item_key FROM recsql.items ORDER BY item_key")]
        vectors = rng.normal(size=(len(keys), 384)).astype(np.float32)
        store.write(conn, "text", keys, vectors, model_version="test")
    conn.execute("ANALYZE recsql.item_embeddings")
    conn.execute("ANALYZE recsql.items")
    query = (
        "SELECT item_id FROM recsql.text_embeddings"
        " ORDER BY embedding <=> (SELECT embedding FROM recsql.text_embeddings WHERE item_id = 'v1') LIMIT 10"
    )
    plan = conn.execute("EXPLAIN (FORMAT JSON) " + query).fetchone()
    plan_text = json.dumps(plan)
    assert "item_embeddings_text_hnsw" in plan_text, plan_text
    rows = conn.execute(query).fetchall()
    assert rows[0]["item_id"] == "v1" and len(rows) == 10


def test_queue_lag_is_reported(conn):
    conn.execute("INSERT INTO recsql.items (item_id, title) VALUES ('x', 'A lamp')")
    lag = {r["space"]: r for r in store.queue_lag(conn)}
    assert lag["text"]["queued"] == 1 and lag["behavior"]["queued"] == 0
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("SELECT recsql.set_space_dim('nope', 8)")
