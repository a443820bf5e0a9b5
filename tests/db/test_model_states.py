"""Shadow state: a candidate's derived state is built beside the active one, fed by the same live
events, swapped in by promotion (readers never fail) and swapped back by a rollback."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from recsql import api, cli, db


def _in(schema: str, query: str) -> sql.Composed:
    """A query over one state's schema: {s} stands for it."""
    return sql.SQL(query).format(s=sql.Identifier(schema))


def _digest(conn, schema: str = "recsql") -> list[tuple[Any, ...]]:
    rows = conn.execute(_in(schema, "SELECT * FROM {s}.state_digest() ORDER BY 1")).fetchall()
    return [tuple(r.values()) for r in rows]


def _rebuilt_digest(conn, schema: str) -> list[tuple[Any, ...]]:
    """The digest after rebuilding that state from the log, in a transaction rolled back after."""
    conn.execute("BEGIN")
    try:
        conn.execute(_in(schema, "SELECT {s}.rebuild()"))
        return _digest(conn, schema)
    finally:
        conn.execute("ROLLBACK")


def _windows(conn, schema: str, rebuilt: bool = False) -> list[tuple[Any, ...]]:
    """A state's user windows (recsql.user_windows), as stored or after a rebuild rolled back."""
    if rebuilt:
        conn.execute("BEGIN")
    try:
        if rebuilt:
            conn.execute(_in(schema, "SELECT {s}.rebuild()"))
        rows = conn.execute(_in(schema, "SELECT * FROM {s}.user_windows ORDER BY user_id")).fetchall()
        return [(r["user_id"], tuple(r["items"]), tuple(r["conversions"])) for r in rows]
    finally:
        if rebuilt:
            conn.execute("ROLLBACK")


def _events(conn, n: int, seed: int, users: int = 40, items: int = 60) -> None:
    rng = random.Random(seed)
    kinds = ["view", "view", "view", "add_to_cart", "purchase", "click"]
    with conn.cursor().copy("COPY recsql.events (user_id, item_id, event_type) FROM STDIN") as copy:
        for _ in range(n):
            copy.write_row((f"u{rng.randrange(users)}", f"i{rng.randrange(items)}", rng.choice(kinds)))


@pytest.fixture
def shop(conn, db_url, monkeypatch):
    monkeypatch.setenv("RECSQL_DATABASE_URL", db_url)
    monkeypatch.setattr(db, "_resolved_url", None)
    _events(conn, 1500, seed=1)
    api.flush(conn)
    conn.execute(
        "INSERT INTO recsql.models (name, params) VALUES ('wide', recsql.check_params(%s)),"
        " ('short', recsql.check_params('{\"history_length\": 3}'))",
        ('{"cooc_window": 30, "similarity": "jaccard", "weights": {"view": 2, "purchase": 8}}',),
    )
    return conn


def _schema(conn, model: str) -> str:
    state = api.model_state(conn, model)
    assert state is not None and state["status"] == "live"
    return str(state["schema_name"])


def test_state_is_built_beside_the_active_one_and_fed_by_live_events(shop):
    active_before = _digest(shop)
    state = api.build_model_state(shop, "wide")
    assert state["built_events"] == 1500 and state["status"] == "live"
    schema = str(state["schema_name"])
    assert _digest(shop) == active_before  # the active state is untouched
    assert _digest(shop, schema) != active_before  # other weights, window and similarity
    assert _digest(shop, schema) == _rebuilt_digest(shop, schema)
    # Its settings and weights are the model's, the shared vocabulary otherwise.
    row = shop.execute(_in(schema, "SELECT cooc_window, similarity FROM {s}.settings")).fetchone()
    assert (row["cooc_window"], row["similarity"]) == (30, "jaccard")
    weights = {
        r["name"]: r["weight"] for r in shop.execute(_in(schema, "SELECT name, weight FROM {s}.event_types"))
    }
    assert weights["view"] == 2 and weights["purchase"] == 8 and weights["add_to_cart"] == 3

    # Live events reach both states; the folder loop folds the shadow after the active one.
    _events(shop, 700, seed=2)
    assert api.fold(shop) == 700
    assert api.fold_states(shop) == 700
    api.flush(shop)
    assert _digest(shop) == _rebuilt_digest(shop, "recsql")
    assert _digest(shop, schema) == _rebuilt_digest(shop, schema)
    # Each state keeps its users' windows at its own length (30 here, 10 for the active one).
    windows = _windows(shop, schema)
    assert windows == _windows(shop, schema, rebuilt=True)
    assert max(len(w[1]) for w in windows) == 30
    assert max(len(w[1]) for w in _windows(shop, "recsql")) == 10
    # The candidate answers from its own state.
    ours = shop.execute(_in(schema, "SELECT item_id FROM {s}.recommend('u1', 5)")).fetchall()
    assert len(ours) == 5

    # Forgetting a user forgets them in every state.
    assert api.forget_user(shop, "u3") > 0
    assert _digest(shop) == _rebuilt_digest(shop, "recsql")
    assert _digest(shop, schema) == _rebuilt_digest(shop, schema)

    assert api.drop_model_state(shop, "wide") is True
    assert shop.execute("SELECT to_regnamespace(%s) AS s", (schema,)).fetchone()["s"] is None
    assert api.drop_model_state(shop, "wide") is False


def test_events_committed_while_the_state_builds_are_not_lost(shop, db_url):
    stop = threading.Event()
    written = []

    def write() -> None:
        with psycopg.connect(db_url, autocommit=True) as writer:
            n = 0
            while not stop.is_set():
                n += 1
                writer.execute(
                    "SELECT recsql.track(%s, %s, 'view', event_id => %s)",
                    (f"w{n % 7}", f"i{n % 50}", f"w-{n}"),
                )
                written.append(n)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        time.sleep(0.2)
        api.build_model_state(shop, "wide")
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert len(written) > 10
    schema = _schema(shop, "wide")
    api.flush(shop)
    assert _digest(shop, schema) == _rebuilt_digest(shop, schema)
    assert _digest(shop) == _rebuilt_digest(shop, "recsql")


def test_promotion_swaps_states_and_rollback_swaps_back(shop):
    runner = CliRunner()
    built = runner.invoke(cli.main, ["models", "build", "wide"])
    assert built.exit_code == 0 and "state of wide built" in built.output
    schema = _schema(shop, "wide")
    candidate, active = _digest(shop, schema), _digest(shop)
    listed = runner.invoke(cli.main, ["models", "list", "--format", "json"])
    assert '"state": "live"' in listed.stdout

    promoted = runner.invoke(cli.main, ["models", "promote", "wide", "--force"])
    assert promoted.exit_code == 0 and "wide is active (swapped)" in promoted.stdout, promoted.output
    assert _digest(shop) == candidate and _digest(shop, schema) == active
    assert shop.execute("SELECT cooc_window FROM recsql.settings").fetchone()["cooc_window"] == 30
    assert shop.execute("SELECT weight FROM recsql.event_types WHERE name = 'view'").fetchone()["weight"] == 2
    # The replaced model's state stays live, under its name, with its weights.
    state = api.model_state(shop, "default")
    assert state is not None and state["schema_name"] == schema
    assert (
        shop.execute(_in(schema, "SELECT weight FROM {s}.event_types WHERE name = 'view'")).fetchone()[
            "weight"
        ]
        == 1
    )
    # Views over the derived tables read the new active state.
    shown = shop.execute("SELECT count(*) AS n FROM recsql.item_neighbors").fetchone()["n"]
    assert (
        shown
        == shop.execute("SELECT sum(cardinality(neighbors)) AS n FROM recsql.neighbor_lists").fetchone()["n"]
    )

    _events(shop, 300, seed=3)
    api.flush(shop)
    assert _digest(shop) == _rebuilt_digest(shop, "recsql")
    assert _digest(shop, schema) == _rebuilt_digest(shop, schema)

    back = runner.invoke(cli.main, ["models", "rollback"])
    assert back.exit_code == 0 and "default is active (swapped)" in back.stdout, back.output
    assert shop.execute("SELECT cooc_window FROM recsql.settings").fetchone()["cooc_window"] == 10
    assert shop.execute("SELECT weight FROM recsql.event_types WHERE name = 'view'").fetchone()["weight"] == 1
    assert _digest(shop) == _rebuilt_digest(shop, "recsql")
    assert api.model_state(shop, "wide") is not None and api.model_state(shop, "default") is None


def test_promoting_a_state_shaping_model_builds_its_state_first(shop):
    res = CliRunner().invoke(cli.main, ["models", "promote", "wide", "--force"])
    assert res.exit_code == 0, res.output
    assert "building the state of wide" in res.output and "wide is active (swapped)" in res.stdout
    # short has default's state-shaping parameters, not wide's: it gets a state of its own too.
    res = CliRunner().invoke(cli.main, ["models", "promote", "short", "--force"])
    assert res.exit_code == 0 and "short is active (swapped)" in res.stdout, res.output
    # Only the model just replaced keeps a state (wide); default's, retired earlier, is dropped.
    assert [r["model"] for r in shop.execute("SELECT model FROM recsql.model_states")] == ["wide"]
    assert (
        shop.execute("SELECT count(*) AS n FROM pg_namespace WHERE nspname LIKE 'recsql_state_%'").fetchone()[
            "n"
        ]
        == 1
    )


def test_a_candidate_with_its_own_state_can_take_traffic(shop):
    refused = CliRunner().invoke(cli.main, ["models", "traffic", "wide", "0.2"])
    assert refused.exit_code == 1 and "recsql.build_model_state('wide')" in refused.output
    api.build_model_state(shop, "wide")
    ok = CliRunner().invoke(cli.main, ["models", "traffic", "wide", "0.2"])
    assert ok.exit_code == 0, ok.output


def test_bad_requests_are_refused_and_change_nothing(shop):
    with pytest.raises(Exception, match='no model "nope"'):
        api.build_model_state(shop, "nope")
    with pytest.raises(Exception, match="is active"):
        api.build_model_state(shop, "default")
    api.build_model_state(shop, "wide")
    with pytest.raises(Exception, match="already has its state"):
        api.build_model_state(shop, "wide")
    assert [r["model"] for r in shop.execute("SELECT model FROM recsql.model_states")] == ["wide"]


def test_readers_never_fail_while_states_swap(shop, db_url):
    api.build_model_state(shop, "wide")
    seen, errors, stop = set(), [], threading.Event()

    def read() -> None:
        with psycopg.connect(db_url, autocommit=True) as reader:
            while not stop.is_set():
                try:
                    row = reader.execute(
                        "SELECT (SELECT cooc_window FROM recsql.settings),"
                        " (SELECT weight FROM recsql.event_types WHERE name = 'view'),"
                        " (SELECT count(*) FROM recsql.recommend('u3', 5)),"
                        " (SELECT count(*) FROM recsql.similar_items('i1', 5)),"
                        " (SELECT count(*) FROM recsql.item_neighbors WHERE item_id = 'i1')"
                    ).fetchone()
                    assert row is not None
                    seen.add(row[:2])
                    assert row[2] == 5 and row[3] == 5
                except (psycopg.Error, AssertionError) as exc:
                    errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for _ in range(3):
            time.sleep(0.2)
            assert shop.execute("SELECT recsql.promote_model('wide') AS how").fetchone()["how"] == "swapped"
            time.sleep(0.2)
            assert (
                shop.execute("SELECT recsql.promote_model('default') AS how").fetchone()["how"] == "swapped"
            )
        time.sleep(0.2)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert seen == {(10, 1.0), (30, 2.0)}  # the old model or the new one, nothing in between
