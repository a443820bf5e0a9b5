"""`recsql demo`: load a synthetic shop, fold it, and show what recsql answers, live."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from psycopg import sql

from recsql import api, db, load, migrate, synth
from recsql.errors import BadInput
from recsql.worker import Folder

SESSIONS_PER_USER = 4
HISTORY_SHOWN = 6
K = 5


def run(users: int, items: int, seed: int) -> None:
    """Create (or reuse) the demo shop in the database and print recommendations for it."""
    if users < 2 or items < 20:
        raise BadInput(
            f"the demo needs at least 2 users and 20 items, got {users} and {items}: raise --users/--items"
        )
    started = time.perf_counter()
    url = db.database_url()
    migrate.upgrade(url)
    shop = synth.catalog(items, seed)
    titles = {it["item_id"]: f"{it['title']} ({it['category']})" for it in shop}
    stream = list(synth.events(users, items, n_sessions=users * SESSIONS_PER_USER, seed=seed))

    def name(item_id: str) -> str:
        return f"{item_id}  {titles.get(item_id, '')}".rstrip()

    with db.connection(url) as conn:
        db.require_schema(conn)
        before = _count(conn, "events")
        changed = load.upsert_items(conn, shop)
        load.copy_events(conn, stream)
        added = _count(conn, "events") - before
        folded = api.flush(conn)
        print(f"Shop: {items:,} items, {users:,} shoppers, {len(stream):,} events (seed {seed}).")
        known = len(stream) - added
        print(
            f"Loaded: {changed:,} items written, {added:,} new events"
            f"{f' ({known:,} already stored, recognised by their event ids)' if known else ''};"
            f" folded {folded:,} into derived state."
        )
        print(
            f"Database: {_count(conn, 'events'):,} events, {_count(conn, 'items'):,} items,"
            f" {_count(conn, 'item_pairs'):,} item pairs."
        )

        heavy, light = _example_users(stream)
        for user in (heavy, light):
            print(f"\n== {user}: recent history (newest first)")
            for row in _history(conn, user):
                print(f"   {row['event_type']:<16} {name(row['item_id'])}")
            print(f"   recommendations for {user}:")
            for row in api.recommend(conn, user, K):
                print(f"   {row['score']:7.4f}  {name(row['item_id'])}  <- {row['reason']}")

        popular = _popular_item(stream)
        print(f"\n== similar to {name(popular)}")
        for row in api.similar_items(conn, popular, K):
            print(f"   {row['score']:7.4f}  {name(row['item_id'])}  (together {row['together']}x)")
        print(f"== bought together with {popular}")
        for row in api.bought_together(conn, popular, K) or [
            {"score": 0.0, "item_id": "(none yet)", "together": 0}
        ]:
            print(f"   {row['score']:7.4f}  {name(row['item_id'])}  (together {row['together']}x)")
        print("== trending now")
        for row in api.trending(conn, K):
            print(f"   {row['score']:9.2f}  {name(row['item_id'])}")

        _live(conn, url, light, shop, stream, name)
        # Literals quoted by psycopg, so the printed commands are valid SQL for any id.
        hints = [
            sql.SQL("select * from recsql.recommend({}, 10)").format(sql.Literal(heavy)),
            sql.SQL("select * from recsql.similar_items({}, 10)").format(sql.Literal(popular)),
            sql.SQL("select * from recsql.bought_together({}, 10)").format(sql.Literal(popular)),
            sql.SQL("select * from recsql.trending(10)"),
            sql.SQL("select * from recsql.explain({}, {})").format(sql.Literal(heavy), sql.Literal(popular)),
            sql.SQL("select * from recsql.session_recommend(array[{}], 10)").format(sql.Literal(popular)),
        ]
        # `recsql db psql` runs the psql bundled with the embedded server (or yours, for an external one).
        lines = [f'  recsql db psql -c "{h.as_string(conn)}"' for h in hints]

    print(
        f'\nDone in {time.perf_counter() - started:.1f} s. Query it yourself (or: psql "$(recsql db url)"):'
    )
    print("\n".join(lines))
    print(f"  recsql recommend {heavy}")
    print(f"  recsql similar {popular}    (add --bought-together for co-purchases)")


def _live(
    conn: Any, url: str, user: str, shop: list[dict[str, Any]], stream: list[synth.Event], name: Any
) -> None:
    """Track one new event and show the user's list change before any fold, then fold it."""
    before = api.recommend(conn, user, K)
    seen = {r["item_id"] for r in _history(conn, user, 10_000)}
    shown = {r["item_id"] for r in before}
    # The most popular item of a category the user has not touched, so the change is easy to see.
    touched = {it["category"] for it in shop if it["item_id"] in seen}
    fresh = {it["item_id"] for it in shop if it["category"] not in touched} or {
        it["item_id"] for it in shop if it["item_id"] not in seen
    }
    popularity = Counter(e.item_id for e in stream if e.item_id in fresh and e.item_id not in shown)
    target = popularity.most_common(1)[0][0] if popularity else sorted(fresh)[0]

    folder = Folder(url, idle_s=0.02)
    folder.start_thread()
    try:
        print(f"\n== live: {user} adds {name(target)} to the cart")
        t0 = time.perf_counter()
        api.track(conn, user, target, "add_to_cart")
        after = api.recommend(conn, user, K)
        ms = (time.perf_counter() - t0) * 1000
        print(
            f"   recommendations right after the event ({ms:.0f} ms for track + recommend, no fold needed):"
        )
        for row in after:
            mark = " " if row["item_id"] in shown else "+"
            print(f" {mark} {row['score']:7.4f}  {name(row['item_id'])}  <- {row['reason']}")
        print(
            f"   (+ marks {sum(r['item_id'] not in shown for r in after)} items that were not in the list before)"
        )
        deadline = time.monotonic() + 10
        while api.fold_status(conn)["pending_events"] and time.monotonic() < deadline:
            time.sleep(0.02)
        print(
            f"   the background folder has folded it into item statistics"
            f" {(time.perf_counter() - t0) * 1000:.0f} ms after the event"
        )
    finally:
        folder.stop()


def _count(conn: Any, table: str) -> int:
    queries = {
        "events": "SELECT count(*) AS n FROM recsql.events",
        "items": "SELECT count(*) AS n FROM recsql.items",
        "item_pairs": "SELECT count(*) AS n FROM recsql.item_pairs",
    }
    return int(conn.execute(queries[table]).fetchone()["n"])


def _history(conn: Any, user: str, limit: int = HISTORY_SHOWN) -> list[dict[str, Any]]:
    return list(
        conn.execute(
            "SELECT item_id, event_type, ts FROM recsql.events WHERE user_id = %(user)s"
            " ORDER BY xid DESC, seq DESC LIMIT %(limit)s",
            {"user": user, "limit": limit},
        ).fetchall()
    )


def _example_users(stream: list[synth.Event]) -> tuple[str, str]:
    """The most active shopper, and a light one who has only browsed so far."""
    per_user = Counter(e.user_id for e in stream)
    heavy = per_user.most_common(1)[0][0]
    buyers = {e.user_id for e in stream if e.event_type != "view"}
    light = sorted((n, u) for u, n in per_user.items() if u != heavy and u not in buyers and 4 <= n <= 12)
    if light:
        return heavy, light[len(light) // 2][1]
    return heavy, next(u for u, _ in per_user.most_common() if u != heavy)


def _popular_item(stream: list[synth.Event]) -> str:
    """The shop's most purchased item, so both similar and bought-together have something to show."""
    bought = Counter(e.item_id for e in stream if e.event_type == "purchase")
    if bought:
        return bought.most_common(1)[0][0]
    return Counter(e.item_id for e in stream).most_common(1)[0][0]
