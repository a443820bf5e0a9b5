"""HTTP benchmark: `recsql serve` under wrk for single-event tracking, batch ingest and recommendations.

    python bench/http_load.py                              # 4 gunicorn workers, 32 connections, 20 s per run
    python bench/http_load.py --workers 8 --connections 64 --duration 30 --no-with-worker
    python bench/http_load.py --workers 2 --server-threads 8 --scenario-connections recommend=2,track=16

Builds its own database recsql_bench_http (100,000 synthetic events, 5,000 items) on recsql's server,
creates a track and a read key with `recsql keys create`, starts `recsql serve` (and `recsql worker`,
as in production) against it, and runs wrk with the scripts in bench/http_lua/ against GET /healthz
(the cost of gunicorn + Flask alone), POST /track-event, POST /v1/events (500 events a request) and
GET /v1/users/<id>/recommendations. wrk runs on the same machine and takes CPU from the server; each
run says where the CPU went (server, worker, PostgreSQL, wrk, anything else). Saves
bench/results/http.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import benchdb

from recsql import api, db, load, synth
from recsql.embeddings import store

HTTP_DB = "recsql_bench_http"
LUA = Path(__file__).resolve().parent / "http_lua"
BIN = Path(sys.executable).parent
BATCH = 500  # events per POST /v1/events request
TARGETS = {
    "track": {"min_rps": 1000.0, "max_p99_ms": 50.0},
    "batch": {"min_events_per_s": 10_000.0},
    "recommend": {"max_p99_ms": 20.0},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Scenario:
    name: str
    lua: str
    path: str
    key: str | None
    args: list[str]
    events_per_request: int = 0  # events stored per 2xx response, for the row-count check


def seed(server: str, n_events: int, n_items: int, seed_: int) -> tuple[str, int]:
    """Create the bench database with a catalog and a folded history; return its URL and user count."""
    url = benchdb.create_fresh(server, HTTP_DB)
    n_users = max(10, n_events // 20)
    stream = synth.events(n_users, n_items, n_events=n_events, seed=seed_)
    with db.connection(url) as conn:
        load.upsert_items(conn, synth.catalog(n_items, seed_))
        done = 0
        while batch := [e for _, e in zip(range(50_000), stream, strict=False)]:
            load.copy_events(conn, batch)
            api.flush(conn)
            done += len(batch)
            log(f"  loaded {done:,}/{n_events:,} events")
        conn.execute("VACUUM ANALYZE")
    return url, n_users


def batch_bodies(path: Path, n_users: int, n_items: int, n_bodies: int, seed_: int) -> None:
    """Write ``n_bodies`` JSON arrays of BATCH events, one per line, eventIds holding the marker "@@"."""
    stream = synth.events(n_users, n_items, n_events=n_bodies * BATCH, seed=seed_ + 1000)
    with path.open("w") as out:
        for b in range(n_bodies):
            events = []
            for i, e in zip(range(BATCH), stream, strict=False):
                event: dict[str, Any] = {
                    "eventType": e.event_type,
                    "productId": e.item_id,
                    "userId": e.user_id,
                    "eventId": f"@@-{i}",
                    "sessionId": f"{e.session_id}-{b}",
                }
                if e.value is not None:
                    event["value"] = e.value
                events.append(event)
            out.write(json.dumps(events, separators=(",", ":")) + "\n")


def known_users(url: str, n: int, path: Path) -> int:
    with db.connection(url) as conn:
        rows = conn.execute(
            "SELECT user_id FROM (SELECT DISTINCT user_id FROM recsql.events) u ORDER BY random() LIMIT %s",
            (n,),
        ).fetchall()
    path.write_text("".join(f"{r['user_id']}\n" for r in rows))
    return len(rows)


def counts(url: str) -> dict[str, int]:
    with db.connection(url) as conn:
        row = benchdb.one(
            conn,
            "SELECT (SELECT count(*) FROM recsql.events) AS events,"
            " (SELECT pending_events FROM recsql.fold_status) AS pending_events",
        )
    return {k: int(v) for k, v in row.items()}


def recsql_env(url: str) -> dict[str, str]:
    return {**os.environ, "RECSQL_DATABASE_URL": url}


def create_key(url: str, scope: str, rate_limit: int) -> str:
    """A key made by the real CLI, which prints it alone on its last stdout line."""
    cmd = [str(BIN / "recsql"), "keys", "create", "--scope", scope, "--rate-limit", str(rate_limit)]
    done = subprocess.run(cmd, env=recsql_env(url), capture_output=True, text=True, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return lines[-1].strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@contextmanager
def process(cmd: list[str], url: str, logfile: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own process group; on exit (also Ctrl-C or an error) stop the whole group."""
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=recsql_env(url), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def wait_ready(base: str, proc: subprocess.Popen[bytes], logfile: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"recsql serve exited with {proc.returncode}:\n{tail(logfile)}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise SystemExit(f"{base}/readyz not ready after {timeout_s:.0f} s ({last}):\n{tail(logfile)}")


# (role, CPU seconds) by pid; machine busy and interrupt seconds; CPU seconds of waited-for children.
CpuSnapshot = tuple[dict[int, tuple[str, float]], tuple[float, float], float]


# Titles of the cluster's processes that serve every database (and so also the bench's).
_SHARED_TITLES = {"walwriter", "checkpointer", "background", "logical", "io", "walsummarizer", "archiver"}


class CpuMeter:
    """CPU seconds by role: the server's and the worker's process groups, PostgreSQL (the bench
    database's backends), the cluster's shared processes (postmaster, WAL writer, checkpointer, I/O
    workers: they also work for any other database on the cluster), wrk, interrupts, and the rest of
    the machine (anything else running, backends of other databases included, which makes the numbers
    lower than the machine can do)."""

    def __init__(self, url: str) -> None:
        self.groups: dict[int, str] = {}
        self.tick = os.sysconf("SC_CLK_TCK")
        # The backend's parent is the postmaster; a server on another machine is not counted (-1).
        self.postmaster = -1
        with db.connection(url) as conn:
            backend = benchdb.one(conn, "SELECT pg_backend_pid() AS pid")["pid"]
            self.dbname = conn.info.dbname
            try:
                self.postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass

    def _processes(self) -> dict[int, tuple[str, float]]:
        """(role, CPU seconds so far) of each live process with a role, by pid."""
        used: dict[int, tuple[str, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited meanwhile
            pid, ppid, pgrp = int(entry.name), int(fields[1]), int(fields[2])
            role = self.groups.get(pgrp)
            if role is None and self.postmaster in (pid, ppid):
                role = self._cluster_role(entry)
            if role is not None:
                used[pid] = (role, (int(fields[11]) + int(fields[12])) / self.tick)
        return used

    def _cluster_role(self, entry: Path) -> str | None:
        """ "postgres" for the bench database's backends, "pg_shared" for the cluster's shared processes
        (they also work for other databases), None (counted as other) for other databases' backends."""
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            return None
        # A backend's title is "postgres: <user> <database> <client> <state>".
        if title[:1] != ["postgres:"] or len(title) < 4 or title[1] in _SHARED_TITLES:
            return "pg_shared"  # the postmaster, WAL writer, checkpointer, I/O workers...
        if self.dbname in title[1:4] or (title[1] == "autovacuum" and self.dbname in title):
            return "postgres"
        return None

    @staticmethod
    def _busy() -> tuple[float, float]:
        """Seconds the cores were busy since boot, and how many of those went to interrupts."""
        # /proc/stat "cpu" line: user nice system idle iowait irq softirq steal, in ticks.
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        tick = os.sysconf("SC_CLK_TCK")
        return (sum(ticks) - ticks[3] - ticks[4]) / tick, (ticks[5] + ticks[6]) / tick

    def cores(self, role: str, seconds: float) -> float:
        """Cores that ``role``'s processes kept busy over the next ``seconds``."""
        before = self._processes()
        time.sleep(seconds)
        now = self._processes()
        used = sum(cpu - before.get(pid, (r, 0.0))[1] for pid, (r, cpu) in now.items() if r == role)
        return used / seconds

    def start(self) -> CpuSnapshot:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self._processes(), self._busy(), usage.ru_utime + usage.ru_stime

    def stop(self, start: CpuSnapshot, seconds: float) -> dict[str, Any]:
        """CPU seconds per role since ``start``, and how many cores each kept busy on average.

        A process that exited in between is left out (its time lands in "other"); one that started
        in between counts whole.
        """
        procs, busy, children = start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = dict.fromkeys([*self.groups.values(), "postgres", "pg_shared"], 0.0)
        for pid, (role, cpu) in self._processes().items():
            before = procs.get(pid)
            used[role] += cpu - (before[1] if before is not None and before[0] == role else 0.0)
        # wrk is the only child waited for in between, so the children's rusage grew by wrk's alone.
        used["wrk"] = usage.ru_utime + usage.ru_stime - children
        # Loopback TCP is mostly softirq work, charged to no process: the kernel's share of the traffic.
        busy_now, irq_now = self._busy()
        used["irq"] = irq_now - busy[1]
        used["other"] = max(0.0, busy_now - busy[0] - sum(used.values()))
        return {
            "cpu_s": {k: round(v, 2) for k, v in used.items()},
            "cores_busy": {k: round(v / seconds, 2) for k, v in used.items()},
        }


def run_wrk(base: str, scenario: Scenario, args: argparse.Namespace, meter: CpuMeter) -> dict[str, Any]:
    connections = args.scenario_connections.get(scenario.name, args.connections)
    cmd = [
        args.wrk,
        f"--threads={min(args.threads, connections)}",
        f"--connections={connections}",
        f"--duration={args.duration}s",
        "--timeout=10s",
        f"--script={LUA / scenario.lua}",
    ]
    if scenario.key:
        cmd.append(f"--header=Authorization: Bearer {scenario.key}")
    cmd += [base + scenario.path, "--", *scenario.args]
    cpu_start = meter.start()
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    cpu = meter.stop(cpu_start, time.monotonic() - started)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    result["connections"] = connections
    result["rps"] = result["requests"] / result["duration_s"]
    result["socket_errors_total"] = sum(result["socket_errors"].values())
    result["errors"] = result["non2xx"] + result["socket_errors_total"]
    if "error_sample" in result and not result["error_sample"]:
        result["error_sample"] = None
    result.update(cpu)
    result["cpu_ms_per_request"] = {
        k: round(1000 * v / max(1, result["requests"]), 3) for k, v in cpu["cpu_s"].items()
    }
    return result


def drain(url: str, timeout_s: float) -> tuple[float | None, int]:
    """Wait until the worker has folded everything; return the seconds it took (None: not drained)."""
    started = time.monotonic()
    while True:
        pending = counts(url)["pending_events"]
        if pending == 0:
            return round(time.monotonic() - started, 1), 0
        if time.monotonic() - started > timeout_s:
            return None, pending
        time.sleep(0.5)


def settle(url: str, meter: CpuMeter, timeout_s: float) -> dict[str, Any]:
    """Wait until the worker is idle: the seeded history folded, the catalog embedded (text model
    loaded, behaviour vectors fitted). Measuring before that would time the worker's start-up."""
    started = time.monotonic()
    while True:
        busy = meter.cores("worker", 2.0)
        pending = counts(url)["pending_events"]
        with db.connection(url) as conn:
            queued = {r["space"]: int(r["queued"]) for r in store.queue_lag(conn)}
        waited = round(time.monotonic() - started, 1)
        if busy < 0.05 and pending == 0:
            # What the worker wrote (vectors, lists, stats) gets its statistics and visibility map now,
            # as autovacuum would give it in a running shop, instead of during the first runs.
            with db.connection(url) as conn:
                conn.execute("VACUUM ANALYZE")
            return {"settled": True, "waited_s": waited, "embedding_queue": queued}
        if waited > timeout_s:
            log(f"!!! worker still busy after {timeout_s:.0f} s; measuring anyway")
            return {"settled": False, "waited_s": waited, "embedding_queue": queued, "worker_cores": busy}
        log(f"  worker settling: {busy:.2f} cores busy, {pending:,} events to fold, embedding queue {queued}")


def failed(r: dict[str, Any]) -> bool:
    """Whether a run had errors, rejected events, or stored rows that do not match the responses."""
    return bool(r["errors"] or r["rejected"] or not r.get("rows", {}).get("ok", True))


def verdict(name: str, r: dict[str, Any]) -> dict[str, Any] | None:
    """Each target of this scenario with the measured value; a run with errors meets none."""
    target = TARGETS.get(name)
    if target is None:
        return None
    checks: dict[str, Any] = {}
    if "min_rps" in target:
        checks["rps"] = {"target": f">= {target['min_rps']:g}", "value": round(r["rps"], 1)}
        checks["rps"]["met"] = r["rps"] >= target["min_rps"]
    if "min_events_per_s" in target:
        eps = r["events_per_s"]
        checks["events_per_s"] = {"target": f">= {target['min_events_per_s']:g}", "value": round(eps)}
        checks["events_per_s"]["met"] = eps >= target["min_events_per_s"]
    if "max_p99_ms" in target:
        p99 = r["latency_ms"]["p99"]
        checks["p99_ms"] = {"target": f"<= {target['max_p99_ms']:g}", "value": round(p99, 2)}
        checks["p99_ms"]["met"] = p99 <= target["max_p99_ms"]
    met = all(c["met"] for c in checks.values()) and not failed(r)
    return {"checks": checks, "met": met}


def measure(base: str, url: str, sc: Scenario, args: argparse.Namespace, meter: CpuMeter) -> dict[str, Any]:
    """One wrk run, with the stored rows checked against the responses and the worker's catch-up time."""
    before = counts(url)
    r = run_wrk(base, sc, args, meter)
    time.sleep(1)  # requests wrk abandoned at its deadline still finish on the server
    after = counts(url)
    r["pending_events_after"] = after["pending_events"]
    if sc.events_per_request:
        r["events_per_s"] = r["rps"] * sc.events_per_request
        stored = after["events"] - before["events"]
        # Requests cut off at wrk's deadline are stored but not counted: up to one per connection.
        slack = args.scenario_connections.get(sc.name, args.connections) * sc.events_per_request
        r["rows"] = {
            "stored": stored,
            "events_in_2xx_requests": (r["requests"] - r["non2xx"]) * sc.events_per_request,
            "accepted_in_bodies": r["accepted"],
            "ok": r["accepted"] <= stored <= r["accepted"] + slack and r["duplicates"] == r["rejected"] == 0,
        }
        if args.with_worker:
            r["drain_s"], r["pending_events_after_drain"] = drain(url, args.drain_timeout)
    r["target"] = verdict(sc.name, r)
    return r


def per_scenario(text: str) -> dict[str, int]:
    """``recommend=4,track=16`` as {"recommend": 4, "track": 16}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"expected name=connections, got {part!r}")
        out[name.strip()] = int(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers (recsql serve --workers).")
    parser.add_argument(
        "--server-threads", type=int, default=None, help="Threads per worker (recsql serve --threads)."
    )
    parser.add_argument("--duration", type=int, default=20, help="Seconds per wrk run.")
    parser.add_argument("--connections", type=int, default=32, help="Open connections wrk keeps busy.")
    parser.add_argument(
        "--scenario-connections",
        type=per_scenario,
        default={},
        help="Connections for some scenarios, e.g. recommend=4,track=16 (the others get --connections).",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads.")
    parser.add_argument(
        "--with-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Run `recsql worker` alongside the server, folding events as in production.",
    )
    parser.add_argument("--events", type=int, default=100_000, help="Seeded history.")
    parser.add_argument("--items", type=int, default=5_000, help="Catalog size.")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--scenarios",
        default="healthz,recommend,track,batch",
        help="Comma-separated subset of healthz, recommend, track, batch, run in this order.",
    )
    parser.add_argument("--port", type=int, default=0, help="Server port (0: a free one).")
    parser.add_argument(
        "--worker-lanes", type=int, choices=(1, 2), default=2, help="recsql worker --lanes (default 2)."
    )
    parser.add_argument(
        "--worker-refresh", type=float, default=None, help="recsql worker --refresh (default: the worker's)."
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=120,
        help="Seconds to wait for the worker to fold a run's events.",
    )
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=900,
        help="Seconds to wait for the worker's start-up work (folding, embedding the catalog).",
    )
    parser.add_argument("--out", default="http.json", help="File name under bench/results/.")
    args = parser.parse_args()
    # `kill` stops the run like Ctrl-C does: the finally blocks stop the server and the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.wrk = shutil.which("wrk")
    if args.wrk is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = (set(names) | set(args.scenario_connections)) - {"healthz", "recommend", "track", "batch"}
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}")

    server = benchdb.server_url()
    log(f"building {HTTP_DB} with {args.events:,} events, {args.items:,} items ...")
    url, n_users = seed(server, args.events, args.items, args.seed)
    machine = benchdb.machine(url)
    log(benchdb.describe(machine))
    track_key = create_key(url, "track", 1_000_000)
    # The read key gets the same generous limit: the bench measures serving, not the rate limiter.
    read_key = create_key(url, "read", 1_000_000)

    tmp = Path(tempfile.mkdtemp(prefix="recsql-bench-http-"))
    bodies = tmp / "bodies.ndjson"
    batch_bodies(bodies, n_users, args.items, 40, args.seed)
    users_file = tmp / "users.txt"
    n_known = known_users(url, 5000, users_file)
    run_tag = uuid.uuid4().hex[:8]
    user_fmt = "u%0" + str(len(synth.user_id(0, n_users)) - 1) + "d"
    item_fmt = "sku-%0" + str(len(synth.item_id(0, args.items)) - 4) + "d"
    scenarios = {
        "healthz": Scenario("healthz", "healthz.lua", "/healthz", None, []),
        "recommend": Scenario(
            "recommend", "recommend.lua", "/v1/users/x/recommendations", read_key, [str(users_file)]
        ),
        "track": Scenario(
            "track",
            "track.lua",
            "/track-event",
            track_key,
            [f"t{run_tag}", str(n_users), user_fmt, str(args.items), item_fmt],
            events_per_request=1,
        ),
        "batch": Scenario("batch", "batch.lua", "/v1/events", track_key, [str(bodies), f"b{run_tag}"], BATCH),
    }

    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    serve_cmd = [str(BIN / "recsql"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    serve_cmd += ["--workers", str(args.workers)]
    if args.server_threads is not None:
        serve_cmd += ["--threads", str(args.server_threads)]
    results: dict[str, dict[str, Any]] = {}
    settled: dict[str, Any] | None = None
    with ExitStack() as stack:
        # Whatever happens, the inputs go (the logs stay when something failed).
        stack.callback(bodies.unlink, missing_ok=True)
        stack.callback(users_file.unlink, missing_ok=True)
        serve = stack.enter_context(process(serve_cmd, url, tmp / "serve.log"))
        wait_ready(base, serve, tmp / "serve.log")
        log(f"serving {base} with {args.workers} workers; logs in {tmp}")
        meter = CpuMeter(url)
        meter.groups[serve.pid] = "server"
        if args.with_worker:
            worker = stack.enter_context(
                process(
                    [str(BIN / "recsql"), "worker", "--lanes", str(args.worker_lanes)]
                    + ([] if args.worker_refresh is None else ["--refresh", str(args.worker_refresh)]),
                    url,
                    tmp / "worker.log",
                )
            )
            meter.groups[worker.pid] = "worker"
            settled = settle(url, meter, args.settle_timeout)
            log(f"worker settled in {settled['waited_s']} s")
        for name in names:
            log(
                f"{name}: wrk {args.scenario_connections.get(name, args.connections)} connections, {args.duration} s ..."
            )
            results[name] = measure(base, url, scenarios[name], args, meter)
            if serve.poll() is not None:
                raise SystemExit(f"recsql serve died during {name}:\n{tail(tmp / 'serve.log')}")
            r = results[name]
            if failed(r):
                log(
                    f"!!! {name}: {r['errors']} ERRORS, {r['rejected']} rejected events:"
                    f" {r['statuses']} {r['socket_errors']}, rows {r.get('rows')}"
                )
                log(f"!!! first error: {r['error_sample']}")

    payload = {
        "machine": machine,
        "args": {k: v for k, v in vars(args).items() if k != "wrk"},
        "concurrency": {
            "connections": {n: args.scenario_connections.get(n, args.connections) for n in names},
            "wrk_threads": args.threads,
        },
        "workers": args.workers,
        "server_threads": args.server_threads,
        "with_worker": args.with_worker,
        "worker_settle": settled,
        "duration_s": args.duration,
        "scale": {"events": args.events, "items": args.items, "users": n_users, "sampled_users": n_known},
        "targets": TARGETS,
        "results": results,
    }
    path = benchdb.save(args.out, payload)
    print_table(machine, args, results)
    log(f"saved {path}")
    if any(failed(r) for r in results.values()):
        log(f"server and worker logs kept in {tmp}")
        sys.exit(1)
    shutil.rmtree(tmp)


def print_table(
    machine: dict[str, Any], args: argparse.Namespace, results: dict[str, dict[str, Any]]
) -> None:
    print(benchdb.describe(machine))
    worker = "with `recsql worker`" if args.with_worker else "no worker"
    threads = "" if args.server_threads is None else f" --threads {args.server_threads}"
    print(
        f"recsql serve --workers {args.workers}{threads}, {worker}; wrk {args.threads} threads"
        f" (at most one per connection), {args.duration} s per run"
    )
    print(
        f"{'run':<10} {'conns':>5} {'requests':>9} {'req/s':>8} {'events/s':>9} {'p50':>7} {'p90':>7} {'p99':>7}"
        f" {'max':>7} {'errors':>6}  target"
    )
    for name, r in results.items():
        lat = r["latency_ms"]
        eps = f"{r['events_per_s']:>9,.0f}" if "events_per_s" in r else f"{'':>9}"
        target = ""
        if r["target"] is not None:
            parts = [
                f"{k} {c['target']}: {'ok' if c['met'] else 'MISSED'}"
                for k, c in r["target"]["checks"].items()
            ]
            target = ", ".join(parts)
        print(
            f"{name:<10} {r['connections']:>5} {r['requests']:>9,} {r['rps']:>8,.0f} {eps} {lat['p50']:>7.2f} {lat['p90']:>7.2f}"
            f" {lat['p99']:>7.2f} {lat['max']:>7.1f} {r['errors']:>6}  {target}"
        )
    print(f"latencies in ms; cores busy during each run (of {machine['cores']}) | CPU ms per request:")
    for name, r in results.items():
        busy = ", ".join(f"{k} {v:.2f}" for k, v in r["cores_busy"].items())
        per = ", ".join(
            f"{k} {v:.2f}" for k, v in r["cpu_ms_per_request"].items() if k not in ("irq", "other")
        )
        print(f"  {name:<10} {busy} | {per}")
    shared = max((r["cores_busy"]["other"] for r in results.values()), default=0.0)
    if shared > 0.2:
        print(
            f"!!! other processes kept up to {shared:.2f} cores busy during the runs: numbers are low; rerun"
        )
    for name, r in results.items():
        if "rows" in r:
            rows = r["rows"]
            print(
                f"{name}: {rows['stored']:,} rows stored, {rows['accepted_in_bodies']:,} accepted in responses,"
                f" {r['duplicates']} duplicates, {r['rejected']} rejected: {'ok' if rows['ok'] else '!!! MISMATCH'}"
                + (f"; worker folded the backlog in {r['drain_s']} s" if "drain_s" in r else "")
            )
    for name, r in results.items():
        if failed(r):
            print(
                f"!!! {name}: {r['errors']} ERRORS, {r['rejected']} rejected events"
                f" (non-2xx {r['statuses']}, socket {r['socket_errors']})"
            )
            print(f"!!! {name} first error response: {r['error_sample']}")


if __name__ == "__main__":
    main()
