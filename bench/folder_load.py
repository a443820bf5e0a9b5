"""The folder under steady tracking: what `recsql worker` costs while single events keep arriving.

    python bench/folder_load.py                         # 1,000 random views/s for 30 s
    python bench/folder_load.py --rate 2000 --seconds 60

Builds recsql_bench_folder on recsql's server with the HTTP bench's shop (100,000 synthetic events,
5,000 items, 5,000 users, folded and listed), then inserts views at a fixed rate, in statements of
25 (as the HTTP server's group commit stores them), each a random known user and an item drawn with
the HTTP bench's skew (r^2 over the catalog), while a `recsql worker` folder runs in this process.
Reports the CPU the folder's database backends used (cores, both lanes), the time spent folding and refreshing
lists, how many lists were patched or recomputed whole, and how far folding lagged. The writer
takes CPU too: run it on an otherwise quiet machine. Saves bench/results/folder_load.json.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import benchdb
import psycopg

from recsql import api, db, load, synth, worker

FOLDER_DB = "recsql_bench_folder"
BATCH = 25
INSERT = (
    "INSERT INTO recsql.events (user_id, item_id, event_type)"
    " SELECT u, i, 'view' FROM unnest(%s::text[], %s::text[]) AS x(u, i)"
)


def log(message: str) -> None:
    print(message, flush=True)


def seed(server: str, n_events: int, n_items: int, n_users: int, seed_: int) -> str:
    url = benchdb.create_fresh(server, FOLDER_DB)
    stream = synth.events(n_users, n_items, n_events=n_events, seed=seed_)
    with db.connection(url) as conn:
        load.upsert_items(conn, synth.catalog(n_items, seed_))
        while batch := [e for _, e in zip(range(50_000), stream, strict=False)]:
            load.copy_events(conn, batch)
            api.flush(conn)
        conn.execute("VACUUM ANALYZE")
    return url


def backend_cpu(pid: int) -> float:
    """CPU seconds a backend (a local server's process) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Timed:
    """Wraps the api calls the folder makes, adding up their time and results."""

    def __init__(self) -> None:
        self.seconds = {"fold": 0.0, "pairs": 0.0, "refresh": 0.0, "states": 0.0}
        self.rounds = self.folded = self.lists = 0
        self._lock = threading.Lock()
        self._orig = (api.fold, api.fold_pairs, api.refresh_neighbors, api.fold_states)

    def install(self) -> None:
        fold, pairs, refresh, states = self._orig

        def timed(name: str, fn: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                t = time.perf_counter()
                result = fn(*args, **kwargs)
                with self._lock:
                    self.seconds[name] += time.perf_counter() - t
                    if name == "fold":
                        self.rounds += 1
                        self.folded += result
                    elif name == "refresh":
                        self.lists += result
                return result

            return call

        api.fold, api.fold_pairs, api.refresh_neighbors, api.fold_states = (
            timed("fold", fold),
            timed("pairs", pairs),
            timed("refresh", refresh),
            timed("states", states),
        )

    def restore(self) -> None:
        api.fold, api.fold_pairs, api.refresh_neighbors, api.fold_states = self._orig

    def reset(self) -> None:
        with self._lock:
            self.seconds = dict.fromkeys(self.seconds, 0.0)
            self.rounds = self.folded = self.lists = 0


def pending(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return benchdb.one(
        conn,
        "SELECT (SELECT coalesce(sum(n), 0) FROM recsql.event_inbox) AS events,"
        " (SELECT count(*) FROM recsql.neighbor_dirty) AS lists,"
        " (SELECT count(*) FROM recsql.neighbor_dirty WHERE partners IS NOT NULL) AS patches",
    )


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    timed = Timed()
    timed.install()
    options = {} if args.refresh is None else {"refresh_s": args.refresh}
    folder = worker.Folder(url, lanes=args.lanes, **options)
    folder.start_thread()
    try:
        with db.connection(url) as conn:
            conn.autocommit = True
            pids: list[int] = []
            for _ in range(50):  # the folder's sessions (one per lane), once they have connected
                pids = [
                    int(str(r["pid"]))
                    for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    ).fetchall()
                ]
                if len(pids) == args.lanes:
                    break
                time.sleep(0.1)
            if len(pids) != args.lanes:
                raise SystemExit(f"the folder did not connect its {args.lanes} lanes")
            rng = random.Random(args.seed)
            users = [synth.user_id(i, args.users) for i in range(args.users)]
            items = [synth.item_id(i, args.items) for i in range(args.items)]
            timed.reset()
            cpu0, t0, sent = sum(map(backend_cpu, pids)), time.perf_counter(), 0
            lag: list[int] = []
            snapshots: list[dict[str, Any]] = []
            next_sample = t0 + 1.0
            while (now := time.perf_counter()) - t0 < args.seconds:
                conn.execute(
                    INSERT,
                    (
                        [rng.choice(users) for _ in range(BATCH)],
                        [items[int(args.items * rng.random() ** 2)] for _ in range(BATCH)],
                    ),
                )
                sent += BATCH
                if now >= next_sample:
                    p = pending(conn)
                    lag.append(int(p["events"]))
                    snapshots.append(p)
                    next_sample += 1.0
                wait = t0 + sent / args.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            elapsed = time.perf_counter() - t0
            cpu = sum(map(backend_cpu, pids)) - cpu0
    finally:
        folder.stop()
        timed.restore()
    patch_share = [s["patches"] / s["lists"] for s in snapshots if s["lists"]]
    return {
        "events": sent,
        "seconds": round(elapsed, 1),
        "events_per_s": round(sent / elapsed),
        "folder_backend_cores": round(cpu / elapsed, 3),
        "folder_backend_ms_per_event": round(cpu / sent * 1000, 3),
        "lanes": args.lanes,
        "folder_refresh_s": folder.refresh_s,
        "fold_s": round(timed.seconds["fold"], 2),
        "fold_pairs_s": round(timed.seconds["pairs"], 2),
        "refresh_s": round(timed.seconds["refresh"], 2),
        "rounds": timed.rounds,
        "folded": timed.folded,
        "lists_refreshed": timed.lists,
        "pending_lists_patched_share": round(sum(patch_share) / len(patch_share), 3) if patch_share else None,
        "pending_events_p50": sorted(lag)[len(lag) // 2] if lag else None,
        "pending_events_max": max(lag) if lag else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="views per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--events", type=int, default=100_000, help="history loaded first")
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--lanes", type=int, choices=(1, 2), default=2, help="folder sessions (default 2)")
    parser.add_argument(
        "--refresh", type=float, default=None, help="the folder's refresh_s (default: the worker's)"
    )
    parser.add_argument("--out", default="folder_load.json")
    args = parser.parse_args()

    server = benchdb.server_url()
    log(f"seeding {FOLDER_DB}: {args.events:,} events, {args.items:,} items ...")
    url = seed(server, args.events, args.items, args.users, args.seed)
    machine = benchdb.machine(url)
    log(benchdb.describe(machine))
    log(f"steady tracking: {args.rate:,.0f} views/s for {args.seconds:.0f} s, folder running ...")
    result = run(url, args)
    log(
        f"  sent {result['events']:,} events at {result['events_per_s']:,}/s; folder backends"
        f" ({result['lanes']} lanes) {result['folder_backend_cores']} cores"
        f" ({result['folder_backend_ms_per_event']} ms per event); fold {result['fold_s']} s, adding pairs"
        f" {result['fold_pairs_s']} s, refresh {result['refresh_s']} s ({result['lists_refreshed']:,} lists,"
        f" {result['pending_lists_patched_share']} of pending lists patches); pending events p50"
        f" {result['pending_events_p50']}, max {result['pending_events_max']}"
    )
    path = benchdb.save(args.out, {"machine": machine, "args": vars(args), **result})
    log(f"saved {path}")


if __name__ == "__main__":
    main()
