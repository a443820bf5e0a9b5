"""Shadow model states: how long a candidate's state takes to build, what each extra live state
costs ingestion, and what readers see while promotion swaps states.

    python bench/model_states.py                              # 300,000 + 4 x 50,000 events, 20,000 items
    python bench/model_states.py --base 1000000 --items 50000  # at the scale of bench/ingest.py

Drops and creates the database recsql_bench_states on recsql's server and saves
bench/results/model_states.json. Ingest cost: the same synthetic stream (bench/ingest.py's shop)
goes through COPY into recsql.events, fold, neighbour refresh and the shadow states' folds, in
chunks, with 0 live states, 2 (wide: a 3x longer pair window, and jaccard), 1 (jaccard, the active
model's window) and again 0; events/s counts all of that work. Times are
wall-clock on a machine that may be busy: rerun to see the noise.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import benchdb
import psycopg
from ingest import COPY_COLUMNS, EVENTS, log, render, timed_copy

from recsql import api, db, load, synth

CANDIDATES = {
    "wide": '{"cooc_window": 30, "weights": {"view": 2, "purchase": 8}}',
    "jaccard": '{"similarity": "jaccard", "min_support": 2}',
}
Conn = psycopg.Connection[Any]


def ingest(conn: Conn, chunks: list[bytes]) -> dict[str, Any]:
    """COPY each chunk, fold it into the active state and every live shadow state, refresh lists."""
    n = copy_s = fold_s = states_s = 0.0
    for payload in chunks:
        copy_s += timed_copy(conn, EVENTS, payload)
        t = time.perf_counter()
        n += api.fold(conn)
        api.refresh_neighbors(conn)
        t2 = time.perf_counter()
        api.fold_states(conn)
        states_s += time.perf_counter() - t2
        fold_s += t2 - t
    total = copy_s + fold_s + states_s
    return {
        "events": int(n),
        "copy_s": round(copy_s, 2),
        "active_fold_s": round(fold_s, 2),
        "shadow_fold_s": round(states_s, 2),
        "events_per_s": round(n / total),
    }


def swap_under_reads(url: str, conn: Conn, model: str, seconds: float) -> dict[str, Any]:
    """Promote ``model`` (a swap) and roll back while readers call recommend(); their latencies and errors."""
    users = [r["user_id"] for r in conn.execute("SELECT DISTINCT user_id FROM recsql.events LIMIT 500")]
    stop = threading.Event()
    latencies: list[tuple[float, float]] = []
    errors: list[str] = []

    def read(offset: int) -> None:
        with psycopg.connect(url, autocommit=True) as reader:
            k = offset
            while not stop.is_set():
                k += 1
                t = time.perf_counter()
                try:
                    reader.execute("SELECT count(*) FROM recsql.recommend(%s, 10)", (users[k % len(users)],))
                except psycopg.Error as exc:
                    errors.append(str(exc))
                latencies.append((t, (time.perf_counter() - t) * 1000))

    readers = [threading.Thread(target=read, args=(i * 100,)) for i in range(2)]
    for r in readers:
        r.start()
    swaps = []
    try:
        time.sleep(seconds)
        for name in (model, "default"):
            t = time.perf_counter()
            how = conn.execute("SELECT recsql.promote_model(%s) AS how", (name,)).fetchone()
            swaps.append(
                {"model": name, "how": how["how"] if how else None, "s": round(time.perf_counter() - t, 3)}
            )
            time.sleep(seconds)
    finally:
        stop.set()
        for r in readers:
            r.join()
    return {
        "swaps": swaps,
        "reader_ms": benchdb.percentiles([ms for _, ms in latencies]),
        "reader_errors": len(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base", type=int, default=300_000, help="Events loaded before the states are built."
    )
    parser.add_argument("--measure", type=int, default=50_000, help="Events per ingest phase.")
    parser.add_argument("--chunk", type=int, default=10_000, help="Events per COPY and fold.")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="model_states.json", help="File name under bench/results/.")
    args = parser.parse_args()
    server = benchdb.server_url()
    url = benchdb.create_fresh(server, "recsql_bench_states")
    machine = benchdb.machine(url)
    log(benchdb.describe(machine))
    total = args.base + 4 * args.measure
    stream = list(synth.events(max(10, total // 20), args.items, n_events=total, seed=args.seed))
    base = render(stream[: args.base], 100_000)
    phases = [
        render(stream[args.base + i * args.measure : args.base + (i + 1) * args.measure], args.chunk)
        for i in range(4)
    ]
    del stream
    results: dict[str, Any] = {
        "machine": machine,
        "args": vars(args),
        "copy_columns": COPY_COLUMNS.as_string(None),
    }
    with db.connection(url) as conn:
        load.upsert_items(conn, synth.catalog(args.items, args.seed))
        t = time.perf_counter()
        for payload in base:
            timed_copy(conn, EVENTS, payload)
            api.fold(conn)
        api.refresh_neighbors(conn)
        results["base_load_s"] = round(time.perf_counter() - t, 1)
        conn.execute("VACUUM ANALYZE")
        log(f"loaded {args.base:,} events in {results['base_load_s']} s")
        for name, params in CANDIDATES.items():
            conn.execute(
                "INSERT INTO recsql.models (name, params) VALUES (%s, recsql.check_params(%s))",
                (name, params),
            )

        ingest_rows = []

        def phase(states: int, chunks: list[bytes]) -> None:
            r = {"live_states": states, **ingest(conn, chunks)}
            ingest_rows.append(r)
            log(f"ingest with {states} live states: {r['events_per_s']:,} events/s ({r})")

        phase(0, phases[0])
        builds = []
        for name in CANDIDATES:
            events = conn.execute("SELECT count(*) AS n FROM recsql.events").fetchone()
            state = api.build_model_state(conn, name)
            builds.append(
                {
                    "model": name,
                    "events": state["built_events"],
                    "seconds": round(float(state["build_seconds"]), 2),
                    "events_per_s": round(int(state["built_events"]) / float(state["build_seconds"])),
                    "log_events": events["n"] if events else None,
                }
            )
            log(f"built the state of {name}: {builds[-1]}")
        results["build"] = builds
        phase(2, phases[1])
        # Left live: jaccard, whose window equals the active model's (wide forms 3x the pairs).
        api.drop_model_state(conn, "wide")
        phase(1, phases[2])
        results["swap"] = swap_under_reads(url, conn, "jaccard", 2.0)
        log(f"swap under reads: {results['swap']}")
        api.drop_model_state(conn, "jaccard")
        phase(0, phases[3])
        results["ingest"] = ingest_rows
        zero = [r["events_per_s"] for r in ingest_rows if r["live_states"] == 0]
        baseline = sum(zero) / len(zero)
        results["cost_per_state"] = {
            str(r["live_states"]): round(1 - r["events_per_s"] / baseline, 3)
            for r in ingest_rows
            if r["live_states"]
        }
    path = benchdb.save(args.out, results)
    print(
        "\nstate builds: "
        + "; ".join(
            f"{b['model']} {b['events']:,} events in {b['seconds']} s ({b['events_per_s']:,}/s)"
            for b in results["build"]
        )
    )
    print("ingest (COPY + fold + lists + shadow folds), events/s by live shadow states:")
    for r in ingest_rows:
        print(
            f"  {r['live_states']} states: {r['events_per_s']:>7,}/s  (shadow folds {r['shadow_fold_s']} s of {r['copy_s'] + r['active_fold_s'] + r['shadow_fold_s']:.1f} s)"
        )
    print(
        f"throughput lost per live states (vs the mean of the two 0-state phases): {results['cost_per_state']}"
    )
    s = results["swap"]
    swaps = ", ".join(f"{x['model']} {x['s']} s" for x in s["swaps"])
    lat = s["reader_ms"]
    print(
        f"promotion swaps: {swaps}; readers during them: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms,"
        f" max {lat.get('max')} ms, {s['reader_errors']} errors"
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
