"""Where recsql.flush() spends its time: each statement it runs, timed by auto_explain.

    RECSQL_HOME=/tmp/rh python bench/profile_flush.py                     # 100,000 new events
    python bench/profile_flush.py --prototype bench/prototypes/flush.sql  # the same, changed SQL

Clones recsql_bench (built by bench/ingest.py) into recsql_bench_profile, optionally runs a
prototype SQL file there (never in recsql_bench), COPYs new events and folds them once with every
nested statement's duration and plan reported. Saves bench/results/profile_flush[-NAME].json.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import benchdb
import psycopg
from ingest import check_against_rebuild
from psycopg import sql

from recsql import api, db, load, synth

PROFILE_DB = "recsql_bench_profile"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def clone(server: str) -> str:
    admin_url = benchdb.database_url(server, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(PROFILE_DB)))
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(PROFILE_DB), sql.Identifier(benchdb.BENCH_DB)
            )
        )
    return benchdb.database_url(server, PROFILE_DB)


def profile(conn: psycopg.Connection[Any], plans: int) -> dict[str, Any]:
    """Flush once with auto_explain reporting every nested statement as a notice."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    for statement in (
        "LOAD 'auto_explain'",
        "SET auto_explain.log_min_duration = 0",
        "SET auto_explain.log_nested_statements = on",
        "SET auto_explain.log_analyze = on",
        "SET auto_explain.log_timing = off",
        "SET auto_explain.log_level = notice",
    ):
        conn.execute(statement)
    t = time.perf_counter()
    folded = api.flush(conn)
    wall = time.perf_counter() - t
    conn.execute("SET auto_explain.log_min_duration = -1")
    steps: list[tuple[float, str, str]] = []
    for text in notices:
        m = re.match(r"duration: ([0-9.]+) ms\s+plan:\s*\nQuery Text:\s*(.*)", text, re.S)
        if not m:
            continue
        body = m.group(2)
        query = " ".join(body.split("\n")[0].split())[:110]
        steps.append((float(m.group(1)), query, body))
    # Leaves only: a call of a recsql function includes the statements it runs.
    slow = sorted(
        (st for st in steps if not st[1].upper().startswith("SELECT RECSQL.")), key=lambda st: -st[0]
    )
    return {
        "folded": folded,
        "wall_s": round(wall, 3),
        "events_per_s": round(folded / wall) if wall else None,
        "steps": [{"ms": ms, "query": query} for ms, query, _ in steps],
        "slowest_plans": [plan for _, _, plan in slow[:plans]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=50_000, help="Same ids as bench/ingest.py's users.")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument(
        "--prototype",
        type=Path,
        action="append",
        default=[],
        help="SQL file run in the clone first (repeatable).",
    )
    parser.add_argument(
        "--check", action="store_true", help="Then compare derived state with recsql.rebuild()."
    )
    parser.add_argument("--plans", type=int, default=3, help="Plans of the slowest statements to print.")
    args = parser.parse_args()

    server = benchdb.server_url()
    if not benchdb.exists(server):
        raise SystemExit(f"{benchdb.BENCH_DB} does not exist: run bench/ingest.py first")
    url = clone(server)
    with db.connection(url) as conn:
        for prototype in args.prototype:
            conn.execute(prototype.read_text().encode())
            log(f"applied {prototype} to {PROFILE_DB}")
        stream = synth.events(args.users, args.items, n_events=args.events, seed=args.seed)
        t = time.perf_counter()
        load.copy_events(conn, stream)
        log(
            f"copied {args.events:,} events in {time.perf_counter() - t:.1f} s; folding with auto_explain ..."
        )
        result = profile(conn, args.plans)
        if args.check:
            log("comparing derived state with recsql.rebuild() ...")
            result["rebuild_check"] = check_against_rebuild(conn)
            log(f"rebuild check: {'EQUAL' if result['rebuild_check']['equal'] else 'DIFFERENT'}")
    name = "profile_flush" + "".join(f"-{p.stem}" for p in args.prototype) + ".json"
    benchdb.save(name, {"args": vars(args), **result})
    print(f"flush of {result['folded']:,} events: {result['wall_s']} s ({result['events_per_s']:,} events/s)")
    for s in result["steps"]:
        if s["ms"] >= 1:
            print(f"  {s['ms']:10.1f} ms  {s['query']}")
    for plan in result["slowest_plans"]:
        print("\n" + plan)


if __name__ == "__main__":
    main()
