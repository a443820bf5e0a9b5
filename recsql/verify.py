"""Check that a database holds a complete, current recsql schema, and optionally that its derived
state equals a rebuild (checked inside a transaction that is rolled back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from recsql import migrate

TABLES = (
    "settings",
    "event_types",
    "items",
    "events",
    "event_inbox",
    "fold_state",
    "user_item_events",
    "item_event_counts",
    "item_stats",
    "item_pairs",
    "neighbor_lists",
    "neighbor_dirty",
    "user_windows",
)
FUNCTIONS = (
    "track",
    "recommend",
    "similar_items",
    "bought_together",
    "trending",
    "session_recommend",
    "explain",
    "flush",
    "fold",
    "refresh_neighbors",
    "rebuild",
    "forget_user",
    "maintain",
    "state_digest",
)
TRIGGERS = ("events_before_insert", "events_after_insert", "events_guard", "items_touch")
VIEWS = ("user_items", "item_popularity", "item_neighbors", "fold_status")


@dataclass
class Report:
    """Problems found; empty means the database is fine."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _missing(conn: psycopg.Connection[Any], query: str, names: tuple[str, ...]) -> list[str]:
    present = {r[0] for r in conn.execute(query, (list(names),)).fetchall()}
    return [n for n in names if n not in present]


def check(url: str, *, state: bool = False) -> Report:
    """Verify revision, tables, functions, triggers and views; with ``state``, derived state too."""
    report = Report()
    revision, head = migrate.current(url), migrate.head()
    if revision != head:
        report.problems.append(
            f"database is at revision {revision or 'none'}, code expects {head}: run `recsql db upgrade`"
        )
        return report
    with psycopg.connect(url) as conn:
        checks = {
            "table": (
                "SELECT relname FROM pg_class WHERE relnamespace = 'recsql'::regnamespace"
                " AND relkind = 'r' AND relname = ANY(%s)",
                TABLES,
            ),
            "function": (
                "SELECT proname FROM pg_proc WHERE pronamespace = 'recsql'::regnamespace"
                " AND proname = ANY(%s)",
                FUNCTIONS,
            ),
            "trigger": (
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname = ANY(%s)",
                TRIGGERS,
            ),
            "view": (
                "SELECT viewname FROM pg_views WHERE schemaname = 'recsql' AND viewname = ANY(%s)",
                VIEWS,
            ),
        }
        for kind, (query, names) in checks.items():
            report.problems += [f"missing {kind} recsql.{n}" for n in _missing(conn, query, names)]
        if state and report.ok:
            _check_state(conn, report)
        conn.rollback()
    return report


def _check_state(conn: psycopg.Connection[Any], report: Report) -> None:
    conn.execute("SELECT recsql.flush()")
    before = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT * FROM recsql.state_digest()")}
    # The windows are a cache of the log: a missing row is read from it again, a stored one must be
    # exactly what a rebuild computes.
    conn.execute("CREATE TEMP TABLE verify_windows ON COMMIT DROP AS TABLE recsql.user_windows")
    conn.execute("SELECT recsql.rebuild()")
    after = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT * FROM recsql.state_digest()")}
    stale = conn.execute(
        "SELECT count(*) FROM (TABLE verify_windows EXCEPT ALL TABLE recsql.user_windows) d"
    ).fetchone()
    stored = conn.execute("SELECT count(*) FROM verify_windows").fetchone()
    if stale and stale[0]:
        report.problems.append(
            f"recsql.user_windows has {stale[0]} row(s) a rebuild does not; run `recsql rebuild`"
        )
    elif stored:
        report.notes.append(f"recsql.user_windows: {stored[0]:,} stored windows equal to a rebuild")
    for table, digest in before.items():
        if after.get(table) != digest:
            report.problems.append(
                f"recsql.{table} differs from a rebuild ({digest[0]} rows vs {after.get(table, (0,))[0]});"
                " run `recsql rebuild`"
            )
        else:
            report.notes.append(
                f"recsql.{table}: {digest[0]:,} row{'' if digest[0] == 1 else 's'} equal to a rebuild"
            )
