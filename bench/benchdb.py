"""What the bench scripts share: the bench database, the machine's description, percentiles, results."""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from recsql import db, migrate

BENCH_DB = "recsql_bench"
RESULTS = Path(__file__).resolve().parent / "results"


def one(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> dict[str, Any]:
    """The single row a query returns, as a dict (the connection has dict rows)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return dict(row)


def server_url() -> str:
    """The server recsql uses (RECSQL_DATABASE_URL, else the embedded one under RECSQL_HOME)."""
    return str(db.database_url())


def database_url(server: str, name: str = BENCH_DB) -> str:
    """URL of database ``name`` on the same server."""
    return make_conninfo(server, dbname=name)


def exists(server: str, name: str = BENCH_DB) -> bool:
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as admin:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def drop(server: str, *names: str) -> None:
    """Drop databases ``names`` on the server if they exist, ending their sessions."""
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_fresh(server: str, name: str = BENCH_DB) -> str:
    """Drop and create database ``name``, migrate it to head and return its URL."""
    drop(server, name)
    with psycopg.connect(database_url(server, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = database_url(server, name)
    migrate.upgrade(url)
    return url


def machine(url: str) -> dict[str, Any]:
    """Cores, memory, CPU model and the PostgreSQL server with the settings that matter here."""
    mem_kib = 0
    model = platform.processor()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    names = [
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "max_wal_size",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "max_connections",
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SELECT version()").fetchone()
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings"
                " WHERE name = ANY(%s) ORDER BY name",
                (names,),
            ).fetchall()
        )
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": model,
        "postgres": version[0] if version else None,
        "settings": settings,
    }


def describe(m: dict[str, Any]) -> str:
    return (
        f"machine: {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}\n"
        f"server:  {m['postgres']}\n"
        f"         {', '.join(f'{k}={v}' for k, v in m['settings'].items())}"
    )


def percentiles(ms: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of a list of milliseconds, rounded to microseconds."""
    if not ms:
        return {}
    xs = sorted(ms)

    def at(q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    return {
        k: round(v, 3)
        for k, v in {
            "n": len(xs),
            "p50": at(0.50),
            "p90": at(0.90),
            "p99": at(0.99),
            "max": xs[-1],
            "mean": statistics.fmean(xs),
        }.items()
    }


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
