"""Ingestion benchmark: COPY with derived state maintained, raw COPY, track latency, storage, and 16
concurrent writers with a folder, checked exactly against recsql.rebuild().

The bulk phase times each step apart (COPY, fold, refresh, one after the other); the streaming
phase loads the same chunks again into a database of its own while a `recsql worker` folder runs
alongside, as a stream of committed batches would arrive, and times it until all is maintained.

    RECSQL_HOME=/tmp/rh python bench/ingest.py                  # 1,000,000 events, 50,000 items
    python bench/ingest.py --events 100000 --items 5000          # a quick run

Drops and creates the database recsql_bench on recsql's server (bench/query.py reuses it) and saves
bench/results/ingest.json. Times are wall-clock on a machine that may be busy: rerun to see the noise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import benchdb
import psycopg
from psycopg import sql

from recsql import api, db, load, synth
from recsql.worker import Folder

EVENTS = sql.Identifier("recsql", "events")
SCRATCH = "bench_scratch"
RAW = sql.Identifier(SCRATCH, "events_raw")
# Exact derived state: equal to what recsql.rebuild() computes, to the last digit.
DERIVED = ("user_item_events", "item_event_counts", "item_stats", "item_pairs", "user_windows")
# The serving index: lists scored with the item statistics of the moment they were refreshed.
SERVING = ("neighbor_lists", "neighbor_dirty")
STORED = ("events", "event_inbox", *DERIVED, *SERVING)
COPY_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, load.EVENT_COLUMNS))
Conn = psycopg.Connection[Any]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def render(events: Iterable[synth.Event], chunk: int) -> list[bytes]:
    """COPY text payloads of ``chunk`` events each (synth ids hold no tab, newline or backslash)."""
    chunks: list[bytes] = []
    lines: list[str] = []
    for e in events:
        value = "\\N" if e.value is None else repr(e.value)
        lines.append(
            f"{e.user_id}\t{e.item_id}\t{e.event_type}\t{e.ts.isoformat()}\t{value}\t"
            f"{e.event_id}\t{e.session_id}\n"
        )
        if len(lines) == chunk:
            chunks.append("".join(lines).encode())
            lines = []
    if lines:
        chunks.append("".join(lines).encode())
    return chunks


def timed_copy(conn: Conn, table: sql.Identifier, payload: bytes) -> float:
    """COPY one payload in its own transaction; return the seconds it took."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(table, COPY_COLUMNS)
    view = memoryview(payload)
    started = time.perf_counter()
    with conn.transaction(), conn.cursor().copy(statement) as copy:
        for offset in range(0, len(view), 1 << 20):
            copy.write(view[offset : offset + (1 << 20)])
    return time.perf_counter() - started


def create_raw_table(conn: Conn) -> None:
    """The raw COPY's target: a copy of recsql.events with its indexes and checks, no triggers."""
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(SCRATCH)))
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE recsql.events INCLUDING ALL)").format(RAW))


def bulk_load(conn: Conn, chunks: list[bytes], n_events: int) -> dict[str, Any]:
    """Interleave raw COPY, COPY into recsql.events and fold per chunk, so both see the same machine.

    Neighbour lists are refreshed once after the last chunk, as `recsql import` and a busy worker
    do for a bulk load: refreshing every list after every chunk would redo the same lists ten times.
    """
    create_raw_table(conn)
    raw_s = copy_s = fold_s = refresh_s = 0.0
    per_chunk = []
    done = 0
    started = time.perf_counter()
    for k, payload in enumerate(chunks, 1):
        raw = timed_copy(conn, RAW, payload)
        cp = timed_copy(conn, EVENTS, payload)
        # recsql.flush() is fold() then refresh_neighbors(): called apart to time each.
        t = time.perf_counter()
        folded = api.fold(conn)
        fo = time.perf_counter() - t
        rf = 0.0
        lists = 0
        if k == len(chunks):
            t = time.perf_counter()
            lists = api.refresh_neighbors(conn)
            rf = time.perf_counter() - t
        size = payload.count(b"\n")
        if folded != size:
            raise SystemExit(f"chunk {k}: fold folded {folded} events, expected {size}")
        raw_s, copy_s, fold_s, refresh_s = raw_s + raw, copy_s + cp, fold_s + fo, refresh_s + rf
        done += size
        per_chunk.append(
            {
                "events": size,
                "raw_copy_s": round(raw, 3),
                "copy_s": round(cp, 3),
                "fold_s": round(fo, 3),
                "refresh_s": round(rf, 3),
                "lists_refreshed": lists,
            }
        )
        elapsed = time.perf_counter() - started
        log(
            f"  chunk {k}/{len(chunks)}: raw {size / raw:,.0f}/s, copy {size / cp:,.0f}/s, fold {size / fo:,.0f}/s,"
            f" refresh {lists:,} lists {rf:.1f} s, maintained {size / (cp + fo + rf):,.0f}/s;"
            f" ETA {elapsed / done * (n_events - done):.0f} s"
        )
    flush_s = fold_s + refresh_s
    maintained = n_events / (copy_s + flush_s)
    raw_rate = n_events / raw_s
    return {
        "events": n_events,
        "chunks": len(chunks),
        "copy_s": round(copy_s, 2),
        "fold_s": round(fold_s, 2),
        "refresh_s": round(refresh_s, 2),
        "flush_s": round(flush_s, 2),
        "raw_copy_s": round(raw_s, 2),
        "copy_events_per_s": round(n_events / copy_s),
        "fold_events_per_s": round(n_events / fold_s),
        "flush_events_per_s": round(n_events / flush_s),
        "maintained_events_per_s": round(maintained),
        "raw_copy_events_per_s": round(raw_rate),
        "ratio_to_raw": round(maintained / raw_rate, 3),
        "per_chunk": per_chunk,
    }


def storage(conn: Conn) -> dict[str, Any]:
    """Bytes per event of the event log, the derived tables and their indexes."""
    n = benchdb.one(conn, "SELECT count(*) AS n FROM recsql.events")["n"]
    tables = {}
    for name in STORED:
        row = benchdb.one(
            conn,
            "SELECT pg_total_relation_size(c.oid) AS total, pg_relation_size(c.oid) AS heap,"
            " pg_indexes_size(c.oid) AS indexes FROM pg_class c WHERE c.oid = %s::regclass",
            (f"recsql.{name}",),
        )
        rows = benchdb.one(
            conn, sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier("recsql", name))
        )
        tables[name] = {
            "rows": rows["n"],
            "total_bytes": row["total"],
            "heap_bytes": row["heap"],
            "index_bytes": row["indexes"],
            "bytes_per_event": round(row["total"] / n, 1),
        }
    raw = benchdb.one(conn, "SELECT pg_total_relation_size(%s::regclass) AS b", (f"{SCRATCH}.events_raw",))[
        "b"
    ]
    total = sum(t["total_bytes"] for t in tables.values())
    return {
        "events": n,
        "bytes_per_event": round(total / n, 1),
        "events_only_bytes_per_event": round(tables["events"]["total_bytes"] / n, 1),
        "derived_bytes_per_event": round(sum(tables[t]["total_bytes"] for t in DERIVED) / n, 1),
        "serving_bytes_per_event": round(sum(tables[t]["total_bytes"] for t in SERVING) / n, 1),
        "raw_table_bytes_per_event": round(raw / n, 1),
        "tables": tables,
    }


STREAM_DB = "recsql_bench_stream"


def streaming_load(
    server: str, shop: list[dict[str, Any]], chunks: list[bytes], folder_options: dict[str, int]
) -> dict[str, Any]:
    """The same chunks COPYed one after another while `recsql worker`'s folder runs alongside.

    As events arrive from a stream of committed batches: the folder folds each chunk once it
    commits, while the next one loads on the other core. Timed from the first COPY until every
    event is folded and no neighbour list is pending, on a database of its own (dropped after).
    Just before, the same chunks are COPYed raw into a trigger-less copy of the events table there,
    so that the run's ratio compares two loads a few seconds apart (this VM's speed drifts).
    """
    url = benchdb.create_fresh(server, STREAM_DB)
    n_events = sum(payload.count(b"\n") for payload in chunks)
    try:
        with db.connection(url) as conn:
            load.upsert_items(conn, shop)
            create_raw_table(conn)
            raw_s = sum(timed_copy(conn, RAW, payload) for payload in chunks)
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(SCRATCH)))
            conn.execute("CHECKPOINT")  # the raw load's dirty pages are not the streaming run's to write
            folder = FolderProcess(url, folder_options)
            started = time.perf_counter()
            copy_s = 0.0
            for payload in chunks:
                copy_s += timed_copy(conn, EVENTS, payload)
            copied = time.perf_counter() - started
            while True:
                # The database's count, not the folder's: whoever folded the events, the state
                # counts as maintained once nothing is pending.
                # The index of pairs by partner too: a bulk of pairs is added without it, and the
                # first refresh after the bulk builds it again (recsql._drop_pair_b_index).
                pending = benchdb.one(
                    conn,
                    "SELECT folded_events, pending_events, pending_pair_events, pending_lists,"
                    " recsql._pair_b_index() IS NOT NULL AS indexed FROM recsql.fold_status",
                )
                if (
                    pending["folded_events"] >= n_events
                    and pending["pending_events"] == 0
                    and pending["pending_pair_events"] == 0
                    and pending["pending_lists"] == 0
                    and pending["indexed"]
                ):
                    break
                time.sleep(0.05)
            wall = time.perf_counter() - started
            folds = folder.stop()
            rounds = folder.list_rounds
    finally:
        benchdb.drop(server, STREAM_DB)
    log(
        f"  streaming: {n_events:,} events maintained in {wall:.1f} s ({n_events / wall:,.0f}/s,"
        f" ratio {raw_s / wall:.3f} to raw COPY at {n_events / raw_s:,.0f}/s just before);"
        f" the COPYs ended after {copied:.1f} s; {len(folds)} fold rounds"
        f" ({sum(sec for _, sec in folds):.1f} s), list lane {sum(r[2] for r in rounds):.1f} s adding pairs"
        f" and {sum(r[3] for r in rounds):.1f} s refreshing {sum(r[1] for r in rounds):,} lists"
    )
    return {
        "events": n_events,
        "raw_copy_s": round(raw_s, 2),
        "raw_copy_events_per_s": round(n_events / raw_s),
        "ratio_to_raw": round(raw_s / wall, 3),
        "wall_s": round(wall, 2),
        "copy_s": round(copy_s, 2),
        "copies_done_after_s": round(copied, 2),
        "maintained_events_per_s": round(n_events / wall),
        "folder_rounds": len(folds),
        "folder_busy_s": round(sum(sec for _, sec in folds), 2),
        "list_rounds": len(rounds),
        "pairing_s": round(sum(r[2] for r in rounds), 2),
        "refreshing_s": round(sum(r[3] for r in rounds), 2),
        "lists_refreshed": sum(r[1] for r in rounds),
    }


def summarize_streaming(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by wall time, with the median of the runs' ratios (each to the raw COPY just
    before it: a run whose raw COPY was slow must not lend the median its better ratio), and every
    run's figures beside them.

    Also the conservative ratio: the fastest raw COPY of the runs against the median wall time. A
    raw COPY slowed by the disk (it writes as much WAL as the load, in a third of the time) raises
    its run's ratio although the load was no faster; this figure does not move with that."""
    median = sorted(runs, key=lambda run: run["wall_s"])[(len(runs) - 1) // 2]
    ratios = sorted(run["ratio_to_raw"] for run in runs)
    fastest_raw = min(run["raw_copy_s"] for run in runs)
    return {
        **median,
        "ratio_to_raw": ratios[(len(ratios) - 1) // 2],
        "ratio_to_fastest_raw": round(fastest_raw / median["wall_s"], 3),
        "fastest_raw_copy_s": fastest_raw,
        "runs": runs,
    }


def _fold_in_child(
    url: str, options: dict[str, Any], ready: Any, stop: Any, folds: Any, progress: Any
) -> None:
    """Body of the folder process: run recsql.worker.Folder until ``stop`` is set, then report its folds.

    ``ready`` is set once the folder is up, as a running `recsql worker` is: its process started and
    its hourly recsql.maintain() done (on a fresh database the first round would run it), so that
    neither is timed as the work of the events loaded next.
    """
    with db.connection(url) as conn:
        api.maintain(conn)
    done: list[tuple[int, float]] = []
    lists: list[tuple[int, int, float, float]] = []

    def on_fold(n: int, seconds: float) -> None:
        done.append((n, seconds))
        progress.value += n

    def on_lists(paired: int, refreshed: int, pair_s: float, refresh_s: float) -> None:
        lists.append((paired, refreshed, pair_s, refresh_s))

    # Polls a little faster than the worker's default (0.1 s) unless told otherwise: a load timed to
    # its end should not wait out the last idle poll.
    folder = Folder(url, on_fold=on_fold, on_lists=on_lists, **{"idle_s": 0.05, **options})
    folder.start_thread()
    ready.set()
    stop.wait()
    folder.stop()
    folds.put((done, lists))


class FolderProcess:
    """A Folder in its own process, as `recsql worker` runs it, so it shares no GIL with the load."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        self._stop = ctx.Event()
        self._folds: Any = ctx.Queue()
        self._progress: Any = ctx.Value("q", 0)
        self._process = ctx.Process(
            target=_fold_in_child,
            args=(url, options, ready, self._stop, self._folds, self._progress),
            daemon=True,
        )
        self._process.start()
        deadline = time.monotonic() + 120
        while not ready.wait(timeout=0.5):
            if not self._process.is_alive() or time.monotonic() > deadline:
                self._process.kill()
                raise RuntimeError(f"the folder process did not start (exit code {self._process.exitcode})")
        # (events paired, lists refreshed, seconds pairing, seconds refreshing) per list round.
        self.list_rounds: list[tuple[int, int, float, float]] = []

    @property
    def folded(self) -> int:
        return int(self._progress.value)

    def stop(self) -> list[tuple[int, float]]:
        """Stop after the round in progress; return (events, seconds) of every round that folded."""
        self._stop.set()
        folds: list[tuple[int, float]]
        folds, self.list_rounds = self._folds.get(timeout=600)
        self._process.join(timeout=60)
        return folds


def track_latency(
    url: str,
    users: list[str],
    items: list[str],
    calls: int,
    with_folder: bool,
    folder_options: dict[str, int],
) -> dict[str, Any]:
    """Client-side wall time of recsql.track over autocommit calls, optionally while a folder runs."""
    rng = random.Random(11 + with_folder)
    folder = FolderProcess(url, folder_options) if with_folder else None
    ms = []
    try:
        with db.connection(url) as conn:
            for i in range(calls + 50):
                kind = "view" if rng.random() < 0.85 else "add_to_cart"
                t = time.perf_counter()
                api.track(conn, rng.choice(users), rng.choice(items), kind)
                if i >= 50:  # the first calls warm caches and the prepared statement
                    ms.append((time.perf_counter() - t) * 1000)
    finally:
        if folder is not None:
            folder.stop()
    return {"with_folder": with_folder, **folder_options, **benchdb.percentiles(ms)}


class Writers:
    """Writer threads sending a mix of single- and multi-event transactions."""

    def __init__(self, url: str, users: list[str], items: list[str], hot: str, seconds: float) -> None:
        self.url, self.users, self.items, self.hot, self.seconds = url, users, items, hot, seconds
        self.lock = threading.Lock()
        self.errors: Counter[str] = Counter()
        self.tx: Counter[str] = Counter()
        self.events = 0
        self.duplicates = 0
        self.stop = threading.Event()
        self.run_tag = uuid.uuid4().hex[:8]  # event ids unique to this run, so only retries are duplicates

    def _item(self, rng: random.Random) -> str:
        return self.hot if rng.random() < 0.3 else rng.choice(self.items)

    def _kind(self, rng: random.Random) -> str:
        x = rng.random()
        return "view" if x < 0.8 else "add_to_cart" if x < 0.92 else "purchase" if x < 0.97 else "wishlist"

    def run(self, n: int) -> None:
        rng = random.Random(1000 + n)
        sent: list[str] = []
        with db.connection(self.url) as conn:
            while not self.stop.is_set():
                x = rng.random()
                size = 1 if x < 0.5 else rng.randint(2, 10)
                one_user = rng.choice(self.users)
                rows = [
                    (
                        one_user if rng.random() < 0.7 else rng.choice(self.users),
                        self._item(rng),
                        self._kind(rng),
                    )
                    for _ in range(size)
                ]
                kind = "single" if size == 1 else "multi_insert" if x < 0.75 else "multi_track"
                events = dup = 0
                try:
                    if kind == "single":
                        # Now and then a client retries an event it already sent: stored once.
                        retry = sent and rng.random() < 0.01
                        event_id = rng.choice(sent) if retry else f"w{self.run_tag}-{n}-{len(sent)}"
                        row = api.track(conn, *rows[0], event_id=event_id)
                        if not retry:
                            sent.append(event_id)
                        events, dup = (0, 1) if row["duplicate"] else (1, 0)
                    elif kind == "multi_insert":
                        with conn.transaction():
                            conn.execute(
                                "INSERT INTO recsql.events (user_id, item_id, event_type)"
                                " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[])",
                                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                            )
                        events = size
                    else:
                        with conn.transaction():
                            for r in rows:
                                api.track(conn, *r)
                        events = size
                except Exception as exc:  # every kind is counted, the writer goes on
                    with self.lock:
                        self.errors[type(exc).__name__] += 1
                    continue
                with self.lock:
                    self.tx[kind] += 1
                    self.events += events
                    self.duplicates += dup


def concurrency(
    url: str,
    users: list[str],
    items: list[str],
    hot: str,
    writers: int,
    seconds: float,
    folder_options: dict[str, int],
) -> dict[str, Any]:
    """``writers`` threads with their own connections for ``seconds``, a folder process folding meanwhile."""
    with db.connection(url) as conn:
        before = benchdb.one(conn, "SELECT count(*) AS n FROM recsql.events")["n"]
    folder = FolderProcess(url, folder_options)
    work = Writers(url, users, items, hot, seconds)
    threads = [threading.Thread(target=work.run, args=(i,), daemon=True) for i in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    try:
        while time.perf_counter() - started < seconds:
            time.sleep(1)
            log(
                f"  {time.perf_counter() - started:4.0f} s: {work.events:,} events,"
                f" {sum(work.tx.values()):,} transactions, errors {dict(work.errors)}, folded {folder.folded:,}"
            )
    finally:
        work.stop.set()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - started
    folded = folder.folded
    folds = folder.stop()
    with db.connection(url) as conn:
        after = benchdb.one(conn, "SELECT count(*) AS n FROM recsql.events")["n"]
    fold_sizes = [n for n, _ in folds]
    return {
        "writers": writers,
        **folder_options,
        "seconds": round(elapsed, 1),
        "events": work.events,
        "events_stored": after - before,
        "duplicates_sent": work.duplicates,
        "transactions": dict(work.tx),
        "events_per_s": round(work.events / elapsed),
        "transactions_per_s": round(sum(work.tx.values()) / elapsed),
        "errors": dict(work.errors),
        "deadlocks": work.errors.get("DeadlockDetected", 0),
        "folds": len(folds),
        "folded_during_run": folded,
        "fold_batch_events": benchdb.percentiles([float(n) for n in fold_sizes]),
        "fold_ms": benchdb.percentiles([s * 1000 for _, s in folds]),
    }


def check_against_rebuild(conn: Conn) -> dict[str, Any]:
    """Fold what is left, copy the derived tables, rebuild, and count rows that differ either way."""
    while api.flush(conn):
        pass
    pending = api.fold_status(conn)["pending_events"]
    schema = sql.Identifier("bench_check")
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    for name in (*DERIVED, "neighbor_lists"):
        conn.execute(
            sql.SQL("CREATE TABLE {} AS TABLE {}").format(
                sql.Identifier("bench_check", name), sql.Identifier("recsql", name)
            )
        )
    t = time.perf_counter()
    replayed = api.rebuild(conn)
    rebuild_s = time.perf_counter() - t
    conn.execute("SET work_mem = '1GB'")
    tables = {}
    for name in DERIVED:
        ours, theirs = sql.Identifier("bench_check", name), sql.Identifier("recsql", name)
        diff = sql.SQL("SELECT count(*) AS n FROM (TABLE {} EXCEPT ALL TABLE {}) d")
        count = sql.SQL("SELECT count(*) AS n FROM {}")
        tables[name] = {
            "rows": benchdb.one(conn, count.format(theirs))["n"],
            "only_incremental": benchdb.one(conn, diff.format(ours, theirs))["n"],
            "only_rebuilt": benchdb.one(conn, diff.format(theirs, ours))["n"],
        }
    # Lists refreshed earlier carry the neighbours' statistics of that moment: count how many differ.
    lists = benchdb.one(
        conn,
        "SELECT count(*) AS rows,"
        " count(*) FILTER (WHERE o.item_key IS NULL OR n.item_key IS NULL) AS missing,"
        " count(*) FILTER (WHERE o.neighbors IS DISTINCT FROM n.neighbors) AS other_neighbors,"
        " count(*) FILTER (WHERE o.scores IS DISTINCT FROM n.scores) AS other_scores"
        " FROM bench_check.neighbor_lists o FULL JOIN recsql.neighbor_lists n USING (kind, item_key)",
    )
    conn.execute("RESET work_mem")
    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))
    equal = all(v["only_incremental"] == 0 and v["only_rebuilt"] == 0 for v in tables.values())
    return {
        "pending_before_check": pending,
        "rebuild_events": replayed,
        "rebuild_s": round(rebuild_s, 2),
        "equal": equal,
        "tables": tables,
        "neighbor_lists": lists,
    }


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def step(title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    log(f"{title} ...")
    t = time.perf_counter()
    result = fn()
    log(f"{title}: done in {time.perf_counter() - t:.1f} s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=None, help="Default: events / 20.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=100_000, help="Events per COPY transaction and flush.")
    parser.add_argument("--track-calls", type=int, default=3000)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30, help="Duration of the concurrent phase.")
    parser.add_argument(
        "--lists-per-round",
        type=int,
        default=None,
        help="Folder's neighbour lists per round (default: worker's).",
    )
    parser.add_argument(
        "--lanes", type=int, choices=(1, 2), default=2, help="Folder's sessions (default: worker's 2)."
    )
    parser.add_argument(
        "--existing",
        metavar="DATABASE",
        default=None,
        help="Skip creating and bulk loading: run the track, concurrency and rebuild phases on DATABASE"
        " (e.g. a clone with prototype SQL); --events/--items/--seed must match how it was built.",
    )
    parser.add_argument(
        "--no-streaming",
        dest="streaming",
        action="store_false",
        help="Skip loading the chunks again, into a database of its own, with the folder running alongside.",
    )
    parser.add_argument(
        "--stream-runs",
        type=int,
        default=3,
        help="Streaming runs, each with its own raw COPY just before; the median is reported (default 3).",
    )
    parser.add_argument("--out", default="ingest.json", help="File name under bench/results/.")
    args = parser.parse_args()
    folder_options = {
        "lists_per_round": args.lists_per_round or Folder(idle_s=0).lists_per_round,
        "lanes": args.lanes,
    }
    n_users = args.users or max(10, args.events // 20)

    server = benchdb.server_url()
    url = benchdb.database_url(server, args.existing) if args.existing else benchdb.create_fresh(server)
    machine = benchdb.machine(url)
    log(benchdb.describe(machine))

    t = time.perf_counter()
    shop = synth.catalog(args.items, args.seed)
    stream = list(synth.events(n_users, args.items, n_events=args.events, seed=args.seed))
    gen_s = time.perf_counter() - t
    chunks = [] if args.existing else render(stream, args.chunk)
    log(f"generated {len(stream):,} events for {n_users:,} users and {len(shop):,} items in {gen_s:.1f} s")
    rng = random.Random(args.seed)
    population = [e.item_id for e in rng.sample(stream, min(len(stream), 200_000))]
    hot = Counter(population).most_common(1)[0][0]
    all_users = sorted({e.user_id for e in stream})
    del stream

    results: dict[str, Any] = {
        "machine": machine,
        "args": vars(args),
        "users": n_users,
        "generate_s": round(gen_s, 2),
    }
    if not args.existing:
        with db.connection(url) as conn:
            load.upsert_items(conn, shop)
            results["bulk"] = step("bulk load", lambda: bulk_load(conn, chunks, args.events))
            results["storage"] = step("storage", lambda: storage(conn))
            conn.execute("VACUUM ANALYZE")
        if args.streaming:
            runs = [
                step(
                    f"streaming load {k}/{args.stream_runs}",
                    lambda: streaming_load(server, shop, chunks, folder_options),
                )
                for k in range(1, args.stream_runs + 1)
            ]
            results["streaming"] = summarize_streaming(runs)
        chunks.clear()
    with db.connection(url) as conn:
        # As after a bulk import in production: the hourly upkeep has run once, so the latency
        # phases below measure a folder in steady state, not its first maintain().
        results["maintain_s"] = round(timed(lambda: (api.maintain(conn), api.flush(conn))), 2)

    results["track"] = [
        step(
            "track latency",
            lambda: track_latency(url, all_users, population, args.track_calls, False, folder_options),
        ),
        step(
            "track latency, folder running",
            lambda: track_latency(url, all_users, population, args.track_calls, True, folder_options),
        ),
    ]
    # Overlapping users: every writer draws from the same few thousand.
    shared_users = random.Random(3).sample(all_users, min(len(all_users), 2000))
    results["concurrency"] = step(
        f"{args.writers} writers for {args.seconds:.0f} s",
        lambda: concurrency(url, shared_users, population, hot, args.writers, args.seconds, folder_options),
    )
    with db.connection(url) as conn:
        results["rebuild_check"] = step("flush, rebuild and compare", lambda: check_against_rebuild(conn))
        conn.execute("VACUUM ANALYZE")
    path = benchdb.save(args.out, results)
    report(results)
    log(f"saved {path}")


def report(r: dict[str, Any]) -> None:
    c, k = r["concurrency"], r["rebuild_check"]
    print(benchdb.describe(r["machine"]))
    if "bulk" in r:
        report_bulk(r)
    for t in r["track"]:
        print(
            f"track latency{' (folder running)' if t['with_folder'] else ''}: p50 {t['p50']:.2f} ms,"
            f" p99 {t['p99']:.2f} ms, max {t['max']:.1f} ms over {t['n']:,} calls   target p99 <= 5 ms"
        )
    print(
        f"concurrency: {c['writers']} writers, {c['seconds']} s: {c['events_per_s']:,} events/s,"
        f" {c['transactions_per_s']:,} transactions/s {c['transactions']}, errors {c['errors'] or 'none'},"
        f" deadlocks {c['deadlocks']}; {c['folds']} folds, p50 {c['fold_ms'].get('p50', 0):.0f} ms"
    )
    print(
        f"  stored {c['events_stored']:,} events for {c['events']:,} sent (+{c['duplicates_sent']} retried ids)"
    )
    print(
        f"rebuild check: {'EQUAL' if k['equal'] else 'DIFFERENT'} after rebuild of {k['rebuild_events']:,} events"
        f" ({k['rebuild_s']} s): "
        + ", ".join(
            f"{n} {v['rows']:,} rows (+{v['only_incremental']}/-{v['only_rebuilt']})"
            for n, v in k["tables"].items()
        )
    )
    nl = k["neighbor_lists"]
    print(
        f"  neighbour lists (refreshed incrementally, so not exact by design): {nl['rows']:,} lists,"
        f" {nl['missing']} missing on one side, {nl['other_neighbors']} with other neighbours,"
        f" {nl['other_scores']} with other scores"
    )


def report_bulk(r: dict[str, Any]) -> None:
    b, s = r["bulk"], r["storage"]
    print(f"bulk: {b['events']:,} events in chunks of {r['args']['chunk']:,}")
    print(f"  COPY into recsql.events  {b['copy_events_per_s']:>9,}/s  ({b['copy_s']} s)")
    print(
        f"  recsql.flush()           {b['flush_events_per_s']:>9,}/s  ({b['flush_s']} s:"
        f" fold {b['fold_s']} s, refresh_neighbors {b['refresh_s']} s)"
    )
    print(f"  maintained (COPY+flush)  {b['maintained_events_per_s']:>9,}/s   target >= 20,000/s")
    print(f"  raw COPY, no triggers    {b['raw_copy_events_per_s']:>9,}/s  ({b['raw_copy_s']} s)")
    print(f"  ratio maintained/raw     {b['ratio_to_raw']:>9}    target >= 0.25")
    if "streaming" in r:
        st = r["streaming"]
        print(
            f"  streaming (COPY while the worker folds, {r['args']['lanes']} lanes), median of"
            f" {len(st.get('runs', [st]))}: {st['maintained_events_per_s']:,}/s ({st['wall_s']} s until all folded"
            f" and listed), median ratio to the raw COPY just before each run {st['ratio_to_raw']}"
            f" (to the fastest raw COPY, {st.get('fastest_raw_copy_s')} s: {st.get('ratio_to_fastest_raw')});"
            f" fold lane {st['folder_busy_s']} s, list lane {st['pairing_s']} s adding pairs +"
            f" {st['refreshing_s']} s refreshing {st['lists_refreshed']:,} lists"
        )
        for run in st.get("runs", []):
            print(
                f"    run: {run['wall_s']} s, {run['maintained_events_per_s']:,}/s, ratio {run['ratio_to_raw']}"
                f" (raw {run['raw_copy_events_per_s']:,}/s)"
            )
    print(
        f"storage: {s['bytes_per_event']} bytes/event (events {s['events_only_bytes_per_event']},"
        f" derived {s['derived_bytes_per_event']}, neighbour lists {s['serving_bytes_per_event']}; raw table {s['raw_table_bytes_per_event']})"
    )
    for name, t in s["tables"].items():
        print(
            f"  {name:<18} {t['rows']:>11,} rows {t['total_bytes'] / 2**20:9.1f} MiB {t['bytes_per_event']:>7} B/event"
        )


if __name__ == "__main__":
    main()
