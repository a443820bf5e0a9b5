"""How fast this machine can maintain state for the ingest benchmark's stream, however the work is split.

`bench/ingest.py`'s streaming figure depends on how well the worker's two sessions overlap. This
script measures the bound that overlap cannot beat: the same per-event work (COPY, fold with the
pairs queued, the queued pairs added, every list refreshed at the end: what the worker's two lanes
do), done by one session one step after the other, alone, and then by two such sessions at the
same time, each loading the whole stream into a database of its own. Two independent loads share
nothing, so two at once are as parallel as this work can get on two cores: the time per million
events they achieve together is the streaming wall's floor, and raw COPY alone divided by it is
the highest streaming ratio this machine can show without doing less work per event.

    python bench/ingest_bound.py                      # 1,000,000 events, 50,000 items
    python bench/ingest_bound.py --events 200000      # a quick run

Creates and drops the databases recsql_bound_0 and recsql_bound_1 on recsql's server and saves
bench/results/ingest_bound.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import benchdb
from ingest import EVENTS, RAW, SCRATCH, create_raw_table, log, render, timed_copy
from psycopg import sql

from recsql import db, load, synth

NAMES = ("recsql_bound_0", "recsql_bound_1")
STEPS = ("copy", "fold", "pairs", "refresh")


def maintained_load(url: str, chunks: list[bytes]) -> dict[str, float]:
    """Every chunk COPYed, folded (pairs queued) and its pairs added; all lists refreshed at the end.
    Returns the seconds of each step and the wall."""
    took = dict.fromkeys(STEPS, 0.0)

    def step(name: str, call: Any) -> None:
        started = time.perf_counter()
        call()
        took[name] += time.perf_counter() - started

    started = time.perf_counter()
    with db.connection(url) as conn:
        conn.autocommit = True
        for payload in chunks:
            step("copy", lambda chunk=payload: timed_copy(conn, EVENTS, chunk))
            step("fold", lambda: conn.execute("SELECT recsql.fold(defer_pairs => true)"))
            step("pairs", lambda: conn.execute("SELECT recsql.fold_pairs()"))
        step("refresh", lambda: conn.execute("SELECT recsql.refresh_neighbors()"))
    return {**{k: round(v, 2) for k, v in took.items()}, "wall_s": round(time.perf_counter() - started, 2)}


def raw_load(url: str, chunks: list[bytes]) -> float:
    """The chunks COPYed into bench/ingest.py's raw COPY target (a trigger-less copy of recsql.events)."""
    with db.connection(url) as conn:
        conn.autocommit = True
        create_raw_table(conn)
        seconds = sum(timed_copy(conn, RAW, payload) for payload in chunks)
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCRATCH)))
    return round(seconds, 2)


def _child(kind: str, url: str, chunks: list[bytes], ready: Any, start: Any, out: Any) -> None:
    ready.put(True)
    start.wait()
    out.put(maintained_load(url, chunks) if kind == "maintained" else {"raw_s": raw_load(url, chunks)})


def side_by_side(kind: str, urls: list[str], chunks: list[bytes]) -> list[dict[str, float]]:
    """The load ``kind`` in one process per database, started together; their results."""
    ctx = multiprocessing.get_context("spawn")
    ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(kind, url, chunks, ready, start, out)) for url in urls]
    for proc in procs:
        proc.start()
    for _ in procs:  # every child imported and waiting, so that they start together
        ready.get(timeout=120)
    start.set()
    results = [out.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a {kind} load failed (exit {proc.exitcode})")
    return results


def fresh(server: str, shop: list[dict[str, Any]]) -> list[str]:
    urls = [benchdb.create_fresh(server, name) for name in NAMES]
    for url in urls:
        with db.connection(url) as conn:
            load.upsert_items(conn, shop)
    return urls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=100_000, help="Events per COPY and fold.")
    parser.add_argument("--out", default="ingest_bound.json", help="File name under bench/results/.")
    args = parser.parse_args()

    server = benchdb.server_url()
    shop = synth.catalog(args.items, args.seed)
    stream = synth.events(max(10, args.events // 20), args.items, n_events=args.events, seed=args.seed)
    chunks = render(stream, args.chunk)
    n = sum(payload.count(b"\n") for payload in chunks)
    try:
        urls = fresh(server, shop)
        machine = benchdb.machine(urls[0])
        log("raw COPY, alone ...")
        raw_alone = raw_load(urls[0], chunks)
        log("raw COPY, two at once ...")
        raw_pair = [r["raw_s"] for r in side_by_side("raw", urls, chunks)]
        log("maintained load, alone ...")
        alone = maintained_load(urls[0], chunks)
        log("maintained load, two at once ...")
        urls = fresh(server, shop)
        pair = side_by_side("maintained", urls, chunks)
    finally:
        benchdb.drop(server, *NAMES)
    # Two loads of n events each, together: the machine maintains 2n events in the longer wall.
    floor_s = max(p["wall_s"] for p in pair) / 2
    results = {
        "machine": machine,
        "args": vars(args),
        "events": n,
        "raw_alone_s": raw_alone,
        "raw_two_at_once_s": raw_pair,
        "maintained_alone": alone,
        "maintained_two_at_once": pair,
        "floor_s_per_load": round(floor_s, 2),
        "bound_events_per_s": round(n / floor_s),
        "bound_ratio_to_raw": round(raw_alone / floor_s, 3),
    }
    path = benchdb.save(args.out, results)
    steps = ", ".join(f"{k} {alone[k]} s" for k in STEPS)
    print(f"{n:,} events, {len(chunks)} chunks; {machine['cores']} cores, {machine['cpu']}")
    print(
        f"  raw COPY alone                 {raw_alone:6.2f} s   two at once: {raw_pair[0]:.2f} and {raw_pair[1]:.2f} s"
    )
    print(f"  maintained, one session alone  {alone['wall_s']:6.2f} s   ({steps})")
    print(
        "  maintained, two at once        "
        + " and ".join(f"{p['wall_s']:.2f}" for p in pair)
        + f" s: {2 * n:,} events in {2 * floor_s:.1f} s"
    )
    print(
        f"  floor for one stream: {floor_s:.1f} s ({n / floor_s:,.0f} events/s);"
        f" highest streaming ratio to raw COPY alone without less work per event: {raw_alone / floor_s:.3f}"
    )
    log(f"saved {path}")


if __name__ == "__main__":
    main()
