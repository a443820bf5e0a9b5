"""Query latency benchmark: recsql.similar_items and recsql.recommend (and the other query functions),
timed inside the database call by call, on the recsql_bench database that bench/ingest.py builds.

    RECSQL_HOME=/tmp/rh python bench/query.py            # builds recsql_bench first if it is missing
    python bench/query.py --samples 500

Each call is timed in a PL/pgSQL loop with clock_timestamp(), so the numbers are the server's work
without the client round trip (measured separately, as client_ms). Saves bench/results/query.json.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

import benchdb
import psycopg

from recsql import api, db, load, synth

TARGETS_MS = {"similar_items": 2.0, "recommend": 10.0}

# The loop reads the calls from a temporary table: a DO block takes no parameters.
_LOOP = """
DO $$
DECLARE
    r record;
    t0 timestamptz;
    ms double precision;
    best double precision;
    first double precision;
    got text[];
BEGIN
    FOR r IN SELECT * FROM bench_calls ORDER BY ord LOOP
        best := null;
        FOR rep IN 1..r.reps LOOP
            t0 := clock_timestamp();
            IF r.fn = 'similar_items' THEN
                SELECT array_agg(s.item_id) INTO got FROM recsql.similar_items(r.arg, 10) s;
            ELSIF r.fn = 'bought_together' THEN
                SELECT array_agg(s.item_id) INTO got FROM recsql.bought_together(r.arg, 10) s;
            ELSIF r.fn = 'recommend' THEN
                SELECT array_agg(s.item_id) INTO got FROM recsql.recommend(r.arg, 10) s;
            ELSIF r.fn = 'session_recommend' THEN
                SELECT array_agg(s.item_id) INTO got
                FROM recsql.session_recommend(string_to_array(r.arg, ','), 10) s;
            ELSIF r.fn = 'trending' THEN
                SELECT array_agg(s.item_id) INTO got FROM recsql.trending(10) s;
            END IF;
            ms := extract(epoch from clock_timestamp() - t0) * 1000;
            IF rep = 1 THEN
                first := ms;
            END IF;
            best := least(best, ms);
        END LOOP;
        INSERT INTO bench_timings (ord, ms, best_ms, n) VALUES (r.ord, first, best, coalesce(cardinality(got), 0));
    END LOOP;
END
$$
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build(server: str, n_events: int, n_items: int, seed: int) -> str:
    """Create recsql_bench like bench/ingest.py does, without its measurements."""
    url = benchdb.create_fresh(server)
    n_users = max(10, n_events // 20)
    stream = synth.events(n_users, n_items, n_events=n_events, seed=seed)
    with db.connection(url) as conn:
        load.upsert_items(conn, synth.catalog(n_items, seed))
        done = 0
        while True:
            batch = [e for _, e in zip(range(100_000), stream, strict=False)]
            if not batch:
                break
            load.copy_events(conn, batch)
            api.flush(conn)
            done += len(batch)
            log(f"  loaded {done:,}/{n_events:,} events")
        conn.execute("VACUUM ANALYZE")
    return url


def sample(conn: psycopg.Connection[Any], n: int, seed: int) -> list[tuple[str, str]]:
    """(function, argument) calls: items with events, users with history and some unknown users."""
    conn.execute("SELECT setseed(%s)", (seed / 1000,))
    uniform_items = [
        r["item_id"]
        for r in conn.execute(
            "SELECT i.item_id FROM recsql.item_stats s JOIN recsql.items i USING (item_key)"
            " ORDER BY random() LIMIT %s",
            (n,),
        )
    ]
    # Requests follow traffic: an item drawn from the event log is drawn by its popularity.
    weighted_items = [
        r["item_id"]
        for r in conn.execute(
            "SELECT item_id FROM recsql.events TABLESAMPLE SYSTEM (1) ORDER BY random() LIMIT %s", (n,)
        )
    ]
    known = [
        r["user_id"]
        for r in conn.execute(
            "SELECT user_id FROM (SELECT DISTINCT user_id FROM recsql.events) u ORDER BY random() LIMIT %s",
            (n - n // 10,),
        )
    ]
    active = [
        r["user_id"]
        for r in conn.execute(
            "SELECT user_id FROM recsql.events TABLESAMPLE SYSTEM (1) ORDER BY random() LIMIT %s", (n,)
        )
    ]
    unknown = [f"nobody-{i}" for i in range(n // 10)]
    rng = random.Random(seed)
    sessions = [",".join(rng.sample(uniform_items, 3)) for _ in range(n // 2)]
    calls = (
        [("similar_items", i) for i in uniform_items]
        + [("similar_items:popular", i) for i in weighted_items]
        + [("bought_together", i) for i in uniform_items]
        + [("recommend", u) for u in known + unknown]
        + [("recommend:active", u) for u in active]
        + [("session_recommend", s) for s in sessions]
        + [("trending", "") for _ in range(n // 5)]
    )
    rng.shuffle(calls)
    return calls


def measure(
    conn: psycopg.Connection[Any], calls: list[tuple[str, str]], reps: int
) -> list[tuple[str, str, float, float, int]]:
    """Run each call ``reps`` times in the database loop; return (label, argument, first ms, best ms, rows)."""
    conn.execute("DROP TABLE IF EXISTS bench_calls, bench_timings")
    conn.execute("CREATE TEMP TABLE bench_calls (ord integer, fn text, arg text, reps integer)")
    conn.execute(
        "CREATE TEMP TABLE bench_timings (ord integer, ms double precision, best_ms double precision, n integer)"
    )
    with conn.cursor().copy("COPY bench_calls (ord, fn, arg, reps) FROM STDIN") as copy:
        for k, (label, arg) in enumerate(calls):
            copy.write_row((k, label.split(":")[0], arg, reps))
    conn.execute(_LOOP)
    rows = conn.execute("SELECT ord, ms, best_ms, n FROM bench_timings ORDER BY ord").fetchall()
    return [(calls[r["ord"]][0], calls[r["ord"]][1], r["ms"], r["best_ms"], r["n"]) for r in rows]


def client_side(conn: psycopg.Connection[Any], calls: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Wall time of the same calls through recsql.api, round trip included."""
    fns = {
        "similar_items": lambda a: api.similar_items(conn, a),
        "recommend": lambda a: api.recommend(conn, a),
    }
    out: dict[str, list[float]] = {}
    for label, arg in calls:
        fn = fns.get(label)
        if fn is None:
            continue
        t = time.perf_counter()
        fn(arg)
        out.setdefault(label, []).append((time.perf_counter() - t) * 1000)
    return {k: benchdb.percentiles(v) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="Items and users sampled per function.")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3, help="Runs per call; the best is reported too.")
    parser.add_argument("--events", type=int, default=1_000_000, help="Only when recsql_bench must be built.")
    parser.add_argument("--items", type=int, default=50_000, help="Only when recsql_bench must be built.")
    parser.add_argument(
        "--database", default=benchdb.BENCH_DB, help="Another database, e.g. a prototype's clone."
    )
    parser.add_argument("--out", default="query.json", help="File name under bench/results/.")
    args = parser.parse_args()

    server = benchdb.server_url()
    url = benchdb.database_url(server, args.database)
    if not benchdb.exists(server, args.database):
        if args.database != benchdb.BENCH_DB:
            raise SystemExit(f"database {args.database} does not exist")
        log(f"building {benchdb.BENCH_DB} with {args.events:,} events ...")
        build(server, args.events, args.items, seed=1)
    machine = benchdb.machine(url)
    log(benchdb.describe(machine))

    with db.connection(url) as conn:
        scale = benchdb.one(
            conn,
            "SELECT (SELECT count(*) FROM recsql.events) AS events, (SELECT count(*) FROM recsql.item_stats) AS items,"
            " (SELECT count(DISTINCT user_id) FROM recsql.events) AS users,"
            " (SELECT count(*) FROM recsql.item_pairs) AS pairs,"
            " (SELECT pending_events FROM recsql.fold_status) AS pending",
        )
        log(f"scale: {scale}")
        calls = sample(conn, args.samples, args.seed)
        log(f"warming up, then timing {len(calls):,} calls ...")
        measure(conn, calls[: len(calls) // 5], 1)
        t = time.perf_counter()
        timed = measure(conn, calls, args.reps)
        log(f"timed in {time.perf_counter() - t:.1f} s")
        client = client_side(conn, calls[: len(calls) // 2])

    first: dict[str, list[float]] = {}
    best: dict[str, list[float]] = {}
    empty: dict[str, int] = {}
    for label, _, ms, fastest, n in timed:
        first.setdefault(label, []).append(ms)
        best.setdefault(label, []).append(fastest)
        empty[label] = empty.get(label, 0) + (n == 0)
    slowest = sorted(timed, key=lambda r: -r[3])[:10]
    server_ms = {k: {**benchdb.percentiles(v), "empty_results": empty[k]} for k, v in sorted(first.items())}
    best_ms = {k: benchdb.percentiles(v) for k, v in sorted(best.items())}
    slow = [{"call": label, "arg": arg, "best_ms": b} for label, arg, _, b, _ in slowest]
    results = {
        "machine": machine,
        "scale": scale,
        "args": vars(args),
        "server_ms": server_ms,
        f"server_ms_best_of_{args.reps}": best_ms,
        "client_ms": client,
        "targets_p99_ms": TARGETS_MS,
        "slowest_best_of_reps": slow,
    }
    path = benchdb.save(args.out, results)
    print(benchdb.describe(machine))
    print(
        f"scale: {scale['events']:,} events, {scale['items']:,} items with events, {scale['users']:,} users,"
        f" {scale['pairs']:,} item pairs"
    )
    print(
        f"server time per call, first run | best of {args.reps} runs (less scheduler noise on a busy machine)"
    )
    print(
        f"{'call (k=10)':<24} {'n':>5} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} | {'p50':>7} {'p99':>7}  target p99"
    )
    for label, p in server_ms.items():
        q = best_ms[label]
        target = TARGETS_MS.get(label.split(":")[0])
        verdict = ""
        if target is not None:
            verdict = f"  <= {target:g} ms: {'ok' if p['p99'] <= target else 'MISSED'}"
            verdict += f" | {'ok' if q['p99'] <= target else 'MISSED'}"
        print(
            f"{label:<24} {p['n']:>5} {p['p50']:>7.2f} {p['p90']:>7.2f} {p['p99']:>7.2f} {p['max']:>7.1f}"
            f" | {q['p50']:>7.2f} {q['p99']:>7.2f}{verdict}"
        )
    for label, p in client.items():
        print(f"client round trip {label:<14} p50 {p['p50']:.2f} ms, p99 {p['p99']:.2f} ms")
    print(
        "slowest: " + ", ".join(f"{s['call']}({str(s['arg'])[:20]}) {s['best_ms']:.1f} ms" for s in slow[:5])
    )
    log(f"saved {path}")


if __name__ == "__main__":
    main()
