import csv
import io
import itertools
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime

import pytest

from recsql import synth

END = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _events(seed=1, n_events=20_000, users=500, items=600):
    return list(synth.events(users, items, n_events=n_events, seed=seed, end=END))


def test_same_seed_same_shop_other_seed_other_shop():
    assert synth.catalog(300, 5) == synth.catalog(300, 5)
    assert synth.catalog(300, 5) != synth.catalog(300, 6)
    assert _events(seed=5, n_events=3000) == _events(seed=5, n_events=3000)
    assert _events(seed=5, n_events=3000) != _events(seed=6, n_events=3000)


def test_catalog_has_readable_items_in_20_to_40_categories():
    items = synth.catalog(1000, 2)
    assert len({it["item_id"] for it in items}) == 1000
    assert 20 <= len({it["category"] for it in items}) <= 40
    assert all(len(it["title"].split()) >= 3 and it["price"] > 0 for it in items)
    assert sum(not it["in_stock"] for it in items) < 100


def test_exact_event_count_unique_ids_and_columns():
    evs = _events(n_events=5000)
    assert len(evs) == 5000
    assert len({e.event_id for e in evs}) == 5000
    assert synth.Event._fields == synth.EVENT_COLUMNS
    assert {e.event_type for e in evs} <= set(synth.EVENT_TYPES)
    assert all(e.value is None for e in evs if e.event_type != "rating")
    assert all(1 <= e.value <= 5 for e in evs if e.event_type == "rating")


def test_sessions_count_when_asked_for_sessions():
    evs = list(synth.events(50, 100, n_sessions=70, seed=3, end=END))
    assert len({e.session_id for e in evs}) == 70


def test_no_timestamp_after_end_nor_now_and_all_within_the_span():
    evs = _events()
    assert all(END - synth.SPAN <= e.ts < END for e in evs)
    fresh = list(synth.events(20, 50, n_events=500, seed=1))
    assert max(e.ts for e in fresh) <= datetime.now(UTC)


def test_sessions_follow_the_funnel_in_time_order():
    sessions = defaultdict(list)
    for e in _events():
        sessions[e.session_id].append(e)
    kinds: Counter[str] = Counter()
    for evs in sessions.values():
        assert len({e.user_id for e in evs}) == 1
        assert all(a.ts < b.ts for a, b in itertools.pairwise(evs))
        viewed, carted, bought = set(), set(), set()
        for e in evs:
            kinds[e.event_type] += 1
            if e.event_type == "view":
                viewed.add(e.item_id)
            elif e.event_type == "wishlist":
                assert e.item_id in viewed
            elif e.event_type == "add_to_cart":
                assert e.item_id in viewed
                carted.add(e.item_id)
            elif e.event_type == "remove_from_cart":
                assert e.item_id in carted
                carted.discard(e.item_id)
            elif e.event_type == "purchase":
                assert e.item_id in carted
                bought.add(e.item_id)
            elif e.event_type == "rating":
                assert e.item_id in bought
    # A funnel: many views, fewer carts, fewer purchases, few removals.
    assert kinds["view"] > 4 * kinds["add_to_cart"] > 0
    assert kinds["add_to_cart"] > kinds["purchase"] > kinds["remove_from_cart"] > 0
    assert kinds["rating"] > 0 and kinds["wishlist"] > 0


def test_popularity_is_skewed():
    counts = Counter(e.item_id for e in _events())
    ranked = [n for _, n in counts.most_common()]
    top = sum(ranked[: len(ranked) // 10])
    assert top > 0.4 * sum(ranked)
    assert ranked[0] > 20 * ranked[len(ranked) // 2]


def test_sessions_browse_related_items():
    category = {it["item_id"]: it["category"] for it in synth.catalog(600, 1)}
    views = defaultdict(list)
    for e in _events():
        if e.event_type == "view":
            views[e.session_id].append(category[e.item_id])
    steps = [(a, b) for cats in views.values() for a, b in itertools.pairwise(cats)]
    same = sum(a == b for a, b in steps) / len(steps)
    assert same > 0.6  # random pairs of 30 categories would agree about 1/30 of the time


def test_writers_match_import_columns():
    evs = list(synth.events(10, 40, n_events=50, seed=1, end=END))
    buf = io.StringIO()
    assert synth.write_csv(buf, evs, synth.EVENT_COLUMNS) == 50
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert tuple(rows[0]) == synth.EVENT_COLUMNS
    assert datetime.fromisoformat(rows[0]["ts"]) == evs[0].ts
    buf = io.StringIO()
    synth.write_ndjson(buf, evs, synth.EVENT_COLUMNS)
    first = json.loads(buf.getvalue().splitlines()[0])
    assert first["event_id"] == evs[0].event_id and "value" not in first


def test_events_need_exactly_one_size():
    with pytest.raises(ValueError, match="exactly one"):
        next(synth.events(10, 40, seed=1))
    with pytest.raises(ValueError, match="timezone"):
        next(synth.events(10, 40, n_events=5, end=datetime(2026, 1, 1)))
