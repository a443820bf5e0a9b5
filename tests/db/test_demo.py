import psycopg
import pytest

from recsql import db, demo, synth
from recsql.errors import BadInput


@pytest.fixture
def demo_db(db_url, monkeypatch):
    monkeypatch.setenv("RECSQL_DATABASE_URL", db_url)
    monkeypatch.setattr(db, "_resolved_url", None)
    return db_url


def _state(url):
    with psycopg.connect(url) as c:
        return c.execute(
            "SELECT (SELECT count(*) FROM recsql.events), (SELECT count(*) FROM recsql.items),"
            " (SELECT count(*) FROM recsql.item_pairs), (SELECT coalesce(sum(n), 0) FROM recsql.item_event_counts),"
            " (SELECT pending_events FROM recsql.fold_status)"
        ).fetchone()


def test_demo_loads_folds_and_shows_every_query(demo_db, capsys):
    demo.run(users=40, items=80, seed=3)
    out = capsys.readouterr().out
    generated = len(list(synth.events(40, 80, n_sessions=40 * demo.SESSIONS_PER_USER, seed=3)))
    events, items, pairs, counted, pending = _state(demo_db)
    assert events == generated + 1  # the shop, plus the live event
    assert items == 80
    assert pairs > 0
    assert counted == events and pending == 0  # everything folded, the live event too
    for text in (
        "recommendations for",
        "similar to",
        "bought together",
        "trending",
        "live:",
        "recsql.recommend('",
        "recsql.similar_items('",
        "recsql recommend u",
    ):
        assert text in out
    assert "+" in out.split("live:")[1]  # the live event changed the list


def test_demo_twice_stores_the_shop_once(demo_db, capsys):
    demo.run(users=30, items=60, seed=4)
    first = _state(demo_db)
    demo.run(users=30, items=60, seed=4)
    second = _state(demo_db)
    assert second[0] == first[0] + 1  # only the second live event is new
    assert second[1] == first[1]
    assert "0 new events" in capsys.readouterr().out


def test_demo_rejects_a_tiny_shop(demo_db):
    with pytest.raises(BadInput, match="at least"):
        demo.run(users=1, items=5, seed=1)
    assert _state(demo_db)[0] == 0
