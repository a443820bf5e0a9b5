"""Freshness under steady traffic: how long after its commit an event shows in derived state.

A probe user views two items that exist only for that probe, in one transaction. From the commit
on, the bench polls (every 10 ms, all probes in flight in one query) until

* **folded**: the fold counted the events (the second item has statistics: `trending()`,
  popularity and item counts see it), and
* **listed**: `recsql.similar_items(first)` returns the second item (pairs added and the first
  item's neighbour list refreshed: what `similar_items()` and `recommend()` read).

Meanwhile writer threads send the synthetic shop's events at a steady rate (live timestamps, a
statement every 50 ms per writer), and `recsql worker`'s folder runs in a process of its own with
its default settings. Each rate runs for --seconds, starting from a flushed state. A user's own events need no probe: `recommend()` reads them from the log at commit.

    python bench/freshness.py                       # rates 0, 100, 1000, 3000 and 5000 events/s
    python bench/freshness.py --rates 0 500 --seconds 10

Drops and creates the database recsql_bench_fresh (dropped again at the end) and saves
bench/results/freshness.json.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid
from typing import Any

import benchdb
import ingest
import psycopg

from recsql import api, db, load, synth

FRESH_DB = "recsql_bench_fresh"
TICK_S = 0.05
POLL_S = 0.01
PROBE_TIMEOUT_S = 60.0
Conn = psycopg.Connection[Any]


class Traffic:
    """Writer threads replaying the synthetic stream at ``rate`` events/s, paced to absolute ticks."""

    def __init__(self, url: str, stream: list[synth.Event], rate: float, writers: int) -> None:
        self.url, self.stream, self.rate, self.writers = url, stream, rate, writers
        self.stop = threading.Event()
        self.sent = 0
        self.late_ticks = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(k,), name=f"writer-{k}", daemon=True)
            for k in range(writers)
        ]

    def start(self) -> None:
        self.started = time.perf_counter()
        for t in self._threads:
            t.start()

    def finish(self) -> float:
        """Stop the writers; return the rate they achieved."""
        self.stop.set()
        for t in self._threads:
            t.join()
        return self.sent / max(time.perf_counter() - self.started, 1e-9)

    def _run(self, k: int) -> None:
        per_tick = self.rate * TICK_S / self.writers
        owed = 0.0
        # Writer k replays every writers-th event: each user's events stay in order within a writer
        # only roughly, as they would arriving from several web servers.
        position = k
        tick = 0
        with db.connection(self.url) as conn:
            conn.autocommit = True
            while not self.stop.is_set():
                owed += per_tick
                n = int(owed)
                owed -= n
                rows = []
                for _ in range(n):
                    e = self.stream[position % len(self.stream)]
                    position += self.writers
                    rows.append(e)
                if rows:
                    try:
                        conn.execute(
                            "INSERT INTO recsql.events (user_id, item_id, event_type, value)"
                            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[])",
                            (
                                [e.user_id for e in rows],
                                [e.item_id for e in rows],
                                [e.event_type for e in rows],
                                [e.value for e in rows],
                            ),
                        )
                    except psycopg.Error as exc:
                        with self._lock:
                            self.errors.append(str(exc))
                        continue
                    with self._lock:
                        self.sent += len(rows)
                tick += 1
                wait = self.started + tick * TICK_S - time.perf_counter()
                if wait > 0:
                    self.stop.wait(wait)
                else:
                    with self._lock:
                        self.late_ticks += 1


class Probes:
    """Probe transactions (sent by the caller, on its schedule) and their lags, measured by polling."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.sent = 0
        # (first item, second item, committed at, folded at, listed at)
        self.flight: list[list[Any]] = []
        self.done: list[list[Any]] = []

    def send(self, conn: Conn) -> None:
        k = self.sent
        self.sent += 1
        user, a, b = (f"probe-{self.tag}-{k}-{part}" for part in ("u", "a", "b"))
        with conn.transaction():
            api.track(conn, user, a, "view")
            api.track(conn, user, b, "view")
        self.flight.append([a, b, time.perf_counter(), None, None])

    def poll(self, conn: Conn) -> None:
        if not self.flight:
            return
        rows = conn.execute(
            "SELECT p.a, p.folded, p.folded AND EXISTS ("
            "  SELECT 1 FROM recsql.similar_items(p.a, 10) s WHERE s.item_id = p.b) AS listed"
            " FROM (SELECT u.a, u.b, EXISTS ("
            "   SELECT 1 FROM recsql.items i JOIN recsql.item_stats s ON s.item_key = i.item_key"
            "   WHERE i.item_id = u.b) AS folded"
            "  FROM unnest(%s::text[], %s::text[]) AS u(a, b)) p",
            ([p[0] for p in self.flight], [p[1] for p in self.flight]),
        ).fetchall()
        now = time.perf_counter()
        state = {r["a"]: (r["folded"], r["listed"]) for r in rows}
        still = []
        for p in self.flight:
            folded, listed = state[p[0]]
            if folded and p[3] is None:
                p[3] = now
            if listed:
                p[4] = now
            if p[4] is not None:
                self.done.append(p)
            elif now - p[2] > PROBE_TIMEOUT_S:
                raise RuntimeError(f"probe {p[0]} not listed after {PROBE_TIMEOUT_S:.0f} s")
            else:
                still.append(p)
        self.flight = still


def phase(url: str, stream: list[synth.Event], rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """Probes every args.probe_every seconds for args.seconds while traffic runs at ``rate`` and a
    folder of its own (the worker's defaults) keeps up."""
    options: dict[str, Any] = {"idle_s": 0.1}  # the worker's default poll (ingest.py polls faster)
    if args.refresh_s is not None:
        options["refresh_s"] = args.refresh_s
    folder = ingest.FolderProcess(url, options)
    try:
        result = _probe(url, stream, rate, args)
    finally:
        folds = folder.stop()
    rounds = folder.list_rounds
    # What keeping up cost the folder: its busy seconds per second of the phase, by kind of work.
    span = args.seconds + 2.0 if rate > 0 else args.seconds
    result["folder"] = {
        "folds": len(folds),
        "fold_s_per_s": round(sum(s for _, s in folds) / span, 3),
        "list_rounds": len(rounds),
        "pairs_s_per_s": round(sum(r[2] for r in rounds) / span, 3),
        "refresh_s_per_s": round(sum(r[3] for r in rounds) / span, 3),
        "lists_refreshed": sum(r[1] for r in rounds),
    }
    print(f"    folder: {result['folder']}", flush=True)
    return result


def _probe(url: str, stream: list[synth.Event], rate: float, args: argparse.Namespace) -> dict[str, Any]:
    probes = Probes(uuid.uuid4().hex[:6])
    rng = random.Random(args.seed)
    traffic = Traffic(url, stream, rate, args.writers) if rate > 0 else None
    pending: list[int] = []
    with db.connection(url) as probe_conn, db.connection(url) as poll_conn:
        probe_conn.autocommit = False
        poll_conn.autocommit = True
        if traffic is not None:
            traffic.start()
            time.sleep(2.0)  # the folder settles into the traffic before the first probe
        started = time.perf_counter()
        next_probe = started
        next_sample = started
        while time.perf_counter() - started < args.seconds:
            now = time.perf_counter()
            if now >= next_probe:
                probes.send(probe_conn)
                # Jittered, so that probes do not lock into step with the folder's rounds (also
                # every 0.25 s by default) and always find it at the same point of its round.
                next_probe += args.probe_every * rng.uniform(0.5, 1.5)
            if now >= next_sample:
                pending.append(
                    benchdb.one(poll_conn, "SELECT pending_events FROM recsql.fold_status")["pending_events"]
                )
                next_sample += 1.0
            probes.poll(poll_conn)
            time.sleep(POLL_S)
        achieved = traffic.finish() if traffic is not None else 0.0
        deadline = time.perf_counter() + PROBE_TIMEOUT_S
        while probes.flight and time.perf_counter() < deadline:
            probes.poll(poll_conn)
            time.sleep(POLL_S)
        probes.poll(poll_conn)
    folded_ms = [(p[3] - p[2]) * 1000 for p in probes.done]
    listed_ms = [(p[4] - p[2]) * 1000 for p in probes.done]
    result = {
        "rate": rate,
        "achieved_events_per_s": round(achieved),
        "writer_errors": len(traffic.errors) if traffic else 0,
        "late_ticks": traffic.late_ticks if traffic else 0,
        "probes": probes.sent,
        "folded_ms": benchdb.percentiles(folded_ms),
        "listed_ms": benchdb.percentiles(listed_ms),
        "listed_within_1s": round(sum(ms <= 1000 for ms in listed_ms) / max(len(listed_ms), 1), 3),
        "pending_events_max": max(pending, default=0),
    }
    f, li = result["folded_ms"], result["listed_ms"]
    print(
        f"  rate {rate:>6,.0f}/s (achieved {achieved:,.0f}/s): folded p50 {f['p50']:.0f} p90 {f['p90']:.0f}"
        f" max {f['max']:.0f} ms; listed p50 {li['p50']:.0f} p90 {li['p90']:.0f} p99 {li['p99']:.0f}"
        f" max {li['max']:.0f} ms; {result['listed_within_1s']:.0%} listed within 1 s"
        f" ({probes.sent} probes, at most {result['pending_events_max']:,} events pending)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[0, 100, 1000, 3000, 5000], help="Events/s."
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="Probing time per rate.")
    parser.add_argument(
        "--probe-every", type=float, default=0.25, help="Mean seconds between probes (jittered by +-50%%)."
    )
    parser.add_argument("--writers", type=int, default=4, help="Writer threads sending the traffic.")
    parser.add_argument("--base-events", type=int, default=200_000, help="Events loaded before probing.")
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--refresh-s", type=float, default=None, help="The folder's refresh_s (default: the worker's)."
    )
    parser.add_argument("--out", default="freshness.json")
    args = parser.parse_args()

    server = benchdb.server_url()
    url = benchdb.create_fresh(server, FRESH_DB)
    try:
        machine = benchdb.machine(url)
        print(benchdb.describe(machine), flush=True)
        shop = synth.catalog(args.items, args.seed)
        n_traffic = int(max(args.rates) * (args.seconds + 10) * 1.2) + 1000
        stream = list(
            synth.events(
                max(10, (args.base_events + n_traffic) // 20),
                args.items,
                n_events=args.base_events + n_traffic,
                seed=args.seed,
            )
        )
        base, traffic = stream[: args.base_events], stream[args.base_events :]
        with db.connection(url) as conn:
            conn.autocommit = True
            load.upsert_items(conn, shop)
            t = time.perf_counter()
            for payload in ingest.render(base, 100_000):
                ingest.timed_copy(conn, ingest.EVENTS, payload)
            api.flush(conn)
            api.maintain(conn)
            print(
                f"base: {len(base):,} events loaded and flushed in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
        phases = []
        with db.connection(url) as conn:
            conn.autocommit = True
            for rate in args.rates:
                # The last phase's leftovers are flushed, so each phase starts caught up.
                api.flush(conn)
                phases.append(phase(url, traffic, rate, args))
        results = {"machine": machine, "args": vars(args), "phases": phases}
    finally:
        benchdb.drop(server, FRESH_DB)
    path = benchdb.save(args.out, results)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
