"""What the query functions return: normalised, filtered, fresh, never repeating an item."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from recsql import api
from recsql.worker import Folder


def load(conn, sessions: dict[str, list[tuple[str, str]]]) -> None:
    with conn.cursor() as cur:
        with cur.copy("COPY recsql.events (user_id, item_id, event_type) FROM STDIN") as cp:
            for user, events in sessions.items():
                for item, event_type in events:
                    cp.write_row((user, item, event_type))
    api.flush(conn)


def ids(rows):
    return [r["item_id"] for r in rows]


@pytest.fixture
def shop(conn):
    conn.execute(
        "INSERT INTO recsql.items (item_id, title, category, price, in_stock) VALUES"
        " ('phone', 'Phone', 'tech', 500, true), ('case', 'Case', 'tech', 20, true),"
        " ('charger', 'Charger', 'tech', 30, false), ('tee', 'T-shirt', 'clothes', 15, true),"
        " ('socks', 'Socks', 'clothes', 5, true), ('best', 'Bestseller', 'books', 10, true)"
    )
    sessions: dict[str, list[tuple[str, str]]] = {}
    # Phone buyers look at cases and chargers; clothes shoppers at tees and socks.
    for u in range(6):
        sessions[f"tech{u}"] = [
            ("phone", "view"),
            ("case", "view"),
            ("charger", "view"),
            ("phone", "purchase"),
            ("case", "purchase"),
        ]
    for u in range(4):
        sessions[f"cloth{u}"] = [("tee", "view"), ("socks", "view")]
    # Everybody also views the bestseller, many times.
    for user in list(sessions):
        sessions[user] = [("best", "view")] * 3 + sessions[user]
    for u in range(20):
        sessions[f"reader{u}"] = [("best", "view")]
    load(conn, sessions)
    return conn


def test_similar_items_are_normalised_not_bestsellers(shop):
    similar = ids(api.similar_items(shop, "phone", 3))
    assert similar[:2] == ["case", "charger"] or similar[:2] == ["charger", "case"]
    assert "best" not in similar[:2]
    scores = [r["score"] for r in api.similar_items(shop, "phone", 5)]
    assert scores == sorted(scores, reverse=True)
    assert all(0 < s <= 1 for s in scores)


def test_recommend_uses_recent_history_and_excludes_purchases(shop):
    api.track(shop, "new", "phone", "view")
    recs = api.recommend(shop, "new", 3)
    assert ids(recs)[0] in {"case", "charger"}
    assert recs[0]["reason"] == "similar to phone"
    # tech0 bought phone and case: neither comes back unless asked.
    assert not {"phone", "case"} & set(ids(api.recommend(shop, "tech0", 10)))
    assert {"phone", "case"} <= set(ids(api.recommend(shop, "tech0", 10, exclude_purchased=False)))


def test_recommend_filters_and_never_repeats(shop):
    api.track(shop, "new", "phone", "view")
    in_stock = ids(api.recommend(shop, "new", 10, in_stock_only=True))
    assert "charger" not in in_stock
    clothes = api.recommend(shop, "new", 10, category="clothes")
    assert set(ids(clothes)) <= {"tee", "socks"}
    everything = ids(api.recommend(shop, "new", 10))
    assert len(everything) == len(set(everything)) == 6


def test_cold_user_gets_trending(shop):
    recs = api.recommend(shop, "stranger", 3)
    assert ids(recs) == ids(api.trending(shop, 3))
    assert ids(recs)[0] == "best"
    assert all(r["reason"] == "trending" and r["score"] == 0 for r in recs)


def test_trending_by_category_and_decay(shop):
    assert set(ids(api.trending(shop, 5, category="clothes"))) == {"socks", "tee"}
    scores = [r["score"] for r in api.trending(shop, 6)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0


def test_bought_together(shop):
    assert ids(api.bought_together(shop, "phone", 5)) == ["case"]
    assert api.bought_together(shop, "tee", 5) == []


def test_session_recommend_excludes_the_session_items(shop):
    recs = ids(api.session_recommend(shop, ["tee"], 3))
    assert recs[0] == "socks"
    assert "tee" not in recs


def test_explain_lists_contributions(shop):
    api.track(shop, "new", "phone", "view")
    api.track(shop, "new", "tee", "view")
    rows = api.explain(shop, "new", "case")
    assert [r["source_item_id"] for r in rows] == ["phone"]
    assert rows[0]["share"] == pytest.approx(1.0)
    assert rows[0]["contribution"] > 0


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_bad_k_is_rejected(shop, k):
    with pytest.raises(psycopg.Error, match="k must be between 1 and 1000"):
        shop.execute("SELECT * FROM recsql.recommend('u', %s)", (k,))
    with pytest.raises(psycopg.Error, match="k must be between 1 and 1000"):
        shop.execute("SELECT * FROM recsql.similar_items('phone', %s)", (k,))


def test_user_history_is_fresh_at_commit_before_any_fold(shop):
    """The user's own new events count as soon as they commit, before the folder runs."""
    assert ids(api.recommend(shop, "visitor", 1)) == ["best"]
    api.track(shop, "visitor", "tee", "view")
    pending = shop.execute("SELECT pending_events FROM recsql.fold_status").fetchone()["pending_events"]
    assert pending == 1
    assert ids(api.recommend(shop, "visitor", 1)) == ["socks"]


def test_folder_makes_new_pairs_visible_within_a_second(db_url, shop):
    folder = Folder(db_url, idle_s=0.05)
    folder.start_thread()
    try:
        api.track(shop, "x", "socks", "view")
        committed = time.monotonic()
        api.track(shop, "x", "charger", "view")
        while "charger" not in ids(api.similar_items(shop, "socks", 10)):
            assert time.monotonic() - committed < 1.0, "pair not folded within one second"
            time.sleep(0.01)
    finally:
        folder.stop()


def _scans_of(plan: dict[str, Any], index: str) -> list[dict[str, Any]]:
    found = [plan] if plan.get("Index Name") == index else []
    for child in plan.get("Plans", []):
        found += _scans_of(child, index)
    return found


def test_recommend_reads_only_new_items_for_the_new_item_places(shop):
    """The new-item places look at items created within new_item_window only: a catalog with no
    new item (or the places switched off) costs one empty index range, not a walk of every item."""
    shop.execute(
        "INSERT INTO recsql.items (item_id, created_at)"
        " SELECT 'old' || g, now() - interval '1 year' FROM generate_series(1, 500) g"
    )
    shop.execute("UPDATE recsql.items SET created_at = now() - interval '1 year'")
    shop.execute("ANALYZE recsql.items")
    sources = shop.execute(
        "SELECT array_agg(item_key) AS k FROM recsql.items WHERE item_id IN ('phone', 'case')"
    ).fetchone()["k"]
    for slots in (1, 0):
        shop.execute("SELECT set_config('recsql.new_item_slots', %s, false)", (str(slots),))
        plan = shop.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) SELECT * FROM recsql._rank(%s, %s, '{}', 10, null, false)",
            (sources, [1.0] * len(sources)),
        ).fetchone()["QUERY PLAN"][0]["Plan"]
        scans = _scans_of(plan, "items_created_idx")
        assert scans, "the new-item places should read items_created_idx"
        assert sum(s["Actual Rows"] for s in scans) == 0
    assert ids(api.recommend(shop, "tech0", 3))  # and recommendations still come
