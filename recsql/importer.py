"""Bulk import of events and items from CSV or NDJSON: validate in Python, COPY in one transaction.

All or nothing by default: one rejected row means nothing is stored. Rows are validated and
written to COPY in chunks, so a file of any size streams through in constant memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from recsql import import_fields as fields
from recsql.errors import RecsqlError, translate
from recsql.import_input import Record, open_records
from recsql.progress import Progress

Conn = psycopg.Connection[Any]
Row = tuple[Any, ...]

CHUNK_ROWS = 20_000  # rows per COPY statement
MAX_LISTED_REJECTS = 10_000  # beyond this, rejected rows are counted but not kept
SUMMARY_REJECTS = 20
RAW_CHARS = 200

EVENT_COLUMNS = ("user_id", "item_id", "event_type", "ts", "value", "event_id", "session_id", "properties")
EVENT_REQUIRED = ("user_id", "item_id", "event_type")
ITEM_COLUMNS = ("item_id", "title", "category", "price", "in_stock", "properties")
ITEM_REQUIRED = ("item_id",)

_COPY_EVENTS = (
    "COPY recsql.events (event_id, user_id, item_id, event_type, value, ts, session_id, properties)"
    " FROM STDIN"
)
_STAGE = sql.Identifier("pg_temp", "recsql_import_items")


class ImportInterrupted(RecsqlError):
    """Ctrl-C stopped an import; its transaction was rolled back."""


@dataclass
class Rejected:
    """One input row that was not loaded."""

    line: int  # 1-based line number in the input (CSV: counting the header as line 1)
    reason: str  # what is wrong and how to fix it
    raw: str  # the offending line, truncated to ~200 chars


@dataclass
class ImportReport:
    """What an import read, stored, skipped and rejected."""

    kind: str  # "events" or "items"
    read: int  # data rows read
    loaded: int  # rows stored
    duplicates: int  # events: event_id already stored or repeated; items: item_id repeated (last row wins)
    rejected: list[Rejected]
    seconds: float
    committed: bool = False  # False: the transaction was rolled back, nothing was stored
    more_rejected: int = 0  # rejected rows beyond the MAX_LISTED_REJECTS kept in ``rejected``
    inserted: int | None = None  # items: how many of ``loaded`` were new
    folded: int | None = None  # events: how many events recsql.flush() folded after the commit
    fold_seconds: float = 0.0

    @property
    def rejected_count(self) -> int:
        return len(self.rejected) + self.more_rejected

    def summary(self) -> str:
        """Describe the outcome for a person: counts, speed and the first rejected rows."""
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        parts = [f"{self.kind}: read {self.read:,} rows in {self.seconds:.1f} s ({rate:,.0f} rows/s)"]
        if self.committed:
            loaded = f"loaded {self.loaded:,}"
            if self.inserted is not None:
                loaded += f" ({self.inserted:,} new, {self.loaded - self.inserted:,} updated)"
            parts.append(loaded)
            if self.duplicates:
                why = (
                    "event_id already stored or repeated in the file"
                    if self.kind == "events"
                    else "item_id repeated in the file; the last row won"
                )
                parts.append(f"{self.duplicates:,} {_plural(self.duplicates, 'duplicate')} skipped ({why})")
        if self.rejected_count:
            parts.append(f"{self.rejected_count:,} rejected")
        lines = [", ".join(parts)]
        if self.folded is not None:
            lines.append(f"folded {self.folded:,} events into derived state in {self.fold_seconds:.1f} s")
        if self.rejected:
            shown = self.rejected[:SUMMARY_REJECTS]
            lines.append(f"rejected rows (first {len(shown)} of {self.rejected_count:,}):")
            for r in shown:
                lines.append(f"  line {r.line}: {r.reason}")
                lines.append(f"    {r.raw}")
        if self.rejected_count and not self.committed:
            valid = self.read - self.rejected_count
            lines.append(
                f"nothing was loaded: {self.rejected_count:,} of {self.read:,} rows were rejected. Fix them and"
                f" import again, or use --skip-invalid to load the {valid:,} valid rows and skip the rest."
            )
        return "\n".join(lines)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _duration(delta: timedelta) -> str:
    if delta.seconds == delta.microseconds == 0:
        return f"{delta.days} {_plural(delta.days, 'day')}"
    return str(delta)


def import_events(
    conn: Conn, source: Path, *, fmt: str | None, skip_invalid: bool, progress: bool
) -> ImportReport:
    """Load events from ``source`` ('-' for stdin) with COPY, then fold them."""
    return _EventImport(conn, skip_invalid).run(source, fmt, progress)


def import_items(
    conn: Conn, source: Path, *, fmt: str | None, skip_invalid: bool, progress: bool
) -> ImportReport:
    """Insert or update catalog items from ``source`` ('-' for stdin); only the given columns change."""
    return _ItemImport(conn, skip_invalid).run(source, fmt, progress)


class _Import:
    """The shared loop: read records, validate, COPY chunks, commit or roll back."""

    kind = ""
    columns: tuple[str, ...] = ()
    required: tuple[str, ...] = ()

    def __init__(self, conn: Conn, skip_invalid: bool) -> None:
        if not conn.autocommit:
            raise RecsqlError(
                "import needs an autocommit connection (db.connect() gives one): "
                "it commits or rolls back its own transaction"
            )
        self.conn = conn
        self.skip_invalid = skip_invalid
        self.report = ImportReport(self.kind, 0, 0, 0, [], 0.0)
        self.sent = 0
        self.progress = Progress(self.kind, enabled=False)

    def prepare(self) -> None:
        """Read what validation needs and create scratch tables (inside the transaction)."""

    def convert(self, values: dict[str, Any], problems: list[str]) -> Row:
        """Return the row to COPY, appending to ``problems`` what is wrong with it."""
        raise NotImplementedError

    def copy(self, rows: list[Row]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Move staged rows to their table and fill the report's counts (inside the transaction)."""

    def after_commit(self) -> None:
        """Work that needs the rows committed."""

    def run(self, source: Path, fmt: str | None, show_progress: bool) -> ImportReport:
        started = time.monotonic()
        try:
            self._run(source, fmt, show_progress)
        except ImportInterrupted:
            raise
        except RecsqlError as exc:
            # Keep the error's type and fields (BadInput.code...); say what happened to the data.
            exc.args = (f"{exc} (nothing was loaded)",)
            raise
        self.report.seconds = time.monotonic() - started
        if self.report.committed:
            self.after_commit()
        return self.report

    def _run(self, source: Path, fmt: str | None, show_progress: bool) -> None:
        with open_records(source, fmt, self.kind, self.columns, self.required) as (records, total, position):
            self.progress = Progress(self.kind, enabled=show_progress, total=total, position=position)
            try:
                with self.conn.transaction():
                    self.prepare()
                    self._load(records)
                    if self.report.rejected_count and not self.skip_invalid:
                        raise psycopg.Rollback()
                    self.finish()
                    self.report.committed = True
            except psycopg.Error as exc:
                self.report.committed = False  # the COMMIT itself can fail
                raise translate(exc) from exc
            except KeyboardInterrupt as exc:
                raise ImportInterrupted(
                    f"{self.kind} import interrupted after {self.report.read:,} rows;"
                    " it was rolled back, nothing was loaded"
                ) from exc
            finally:
                self.progress.done(self.report.read)
        if not self.report.committed:
            self.report.loaded = self.report.duplicates = 0
            self.report.inserted = None

    def _load(self, records: Iterator[Record]) -> None:
        chunk: list[Row] = []
        for rec in records:
            self.report.read += 1
            problems = [f"the row {rec.error}"] if rec.error else []
            row = self.convert(rec.values, problems) if rec.values is not None else ()
            if problems:
                self._reject(rec, "; ".join(problems))
            elif self.skip_invalid or not self.report.rejected_count:
                chunk.append(row)
                if len(chunk) >= CHUNK_ROWS:
                    self._send(chunk)
            self.progress.update(self.report.read)
        if chunk and (self.skip_invalid or not self.report.rejected_count):
            self._send(chunk)

    def _send(self, chunk: list[Row]) -> None:
        self.copy(chunk)
        self.sent += len(chunk)
        chunk.clear()

    def _reject(self, rec: Record, reason: str) -> None:
        if len(self.report.rejected) >= MAX_LISTED_REJECTS:
            self.report.more_rejected += 1
            return
        raw = rec.raw.rstrip("\r\n")
        if len(raw) > RAW_CHARS:
            raw = raw[:RAW_CHARS] + "..."
        self.report.rejected.append(Rejected(rec.line, reason, raw))


class _EventImport(_Import):
    kind = "events"
    columns = EVENT_COLUMNS
    required = EVENT_REQUIRED

    def prepare(self) -> None:
        cur = self.conn.cursor(row_factory=dict_row)
        # now() is the transaction's start time: the same clock the database's own checks use.
        settings = cur.execute("SELECT now() AS now, max_future FROM recsql.settings").fetchone()
        assert settings is not None
        self.now: datetime = settings["now"]
        self.max_future: timedelta = settings["max_future"]
        self.latest = self.now + self.max_future
        self.dropped = 0  # recsql.duplicates_dropped after the last COPY
        self.types: dict[str, tuple[float | None, float | None]] = {
            r["name"]: (r["value_min"], r["value_max"])
            for r in cur.execute("SELECT name, value_min, value_max FROM recsql.event_types")
        }

    def convert(self, values: dict[str, Any], problems: list[str]) -> Row:
        user_id = fields.identifier(values, "user_id", problems, required=True)
        item_id = fields.identifier(values, "item_id", problems, required=True)
        event_id = fields.identifier(values, "event_id", problems, required=False)
        event_type = fields.identifier(values, "event_type", problems, required=True)
        session_id = fields.parse(values, "session_id", fields.session_id, problems)
        value = fields.parse(values, "value", fields.number, problems)
        ts = fields.parse(values, "ts", fields.timestamp, problems)
        properties = fields.parse(values, "properties", fields.json_object, problems)
        if event_type is not None:
            self._check_type(event_type, value, problems)
        if ts is not None and ts > self.latest:
            problems.append(
                f"ts {ts.isoformat()} is more than {_duration(self.max_future)} ahead of the server clock"
                f" ({self.now.isoformat()}); send the time the event happened, or leave ts empty"
            )
        return (event_id, user_id, item_id, event_type, value, ts or self.now, session_id, properties or "{}")

    def _check_type(self, event_type: str, value: float | None, problems: list[str]) -> None:
        if event_type not in self.types:
            known = ", ".join(sorted(self.types))
            problems.append(
                f'event_type "{event_type}" is unknown (known: {known}); fix the name, or add'
                " the type to the recsql.event_types table first"
            )
            return
        low, high = self.types[event_type]
        if high is not None and low is not None and (value is None or not low <= value <= high):
            got = "none" if value is None else f"{value:g}"
            problems.append(
                f'event_type "{event_type}" needs a value between {low:g} and {high:g}, got {got}'
            )

    def copy(self, rows: list[Row]) -> None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            with cur.copy(_COPY_EVENTS) as copy:
                for row in rows:
                    copy.write_row(row)
            copied = cur.rowcount
            # The events trigger drops an event whose event_id is already stored and adds it to
            # recsql.duplicates_dropped (this transaction's total): it is not counted as loaded.
            setting = cur.execute("SELECT current_setting('recsql.duplicates_dropped', true) AS n").fetchone()
        dropped = int((setting or {}).get("n") or 0)
        self.report.loaded += copied - (dropped - self.dropped)
        self.dropped = dropped

    def finish(self) -> None:
        self.report.duplicates = self.sent - self.report.loaded

    def after_commit(self) -> None:
        if not self.report.loaded:
            return
        self.progress.note(f"folding {self.report.loaded:,} events into derived state...")
        started = time.monotonic()
        loaded = f"the {self.report.loaded:,} events were loaded"
        try:
            row = self.conn.cursor(row_factory=dict_row).execute("SELECT recsql.flush() AS n").fetchone()
        except psycopg.Error as exc:
            err = translate(exc)
            err.args = (f"{loaded}, but folding them failed: {err}. Run `recsql flush`.",)
            raise err from exc
        except KeyboardInterrupt as exc:
            raise ImportInterrupted(
                f"{loaded}; folding them was interrupted. Run `recsql flush` (or keep `recsql worker` running)."
            ) from exc
        assert row is not None
        self.report.folded = int(row["n"])
        self.report.fold_seconds = time.monotonic() - started


class _ItemImport(_Import):
    kind = "items"
    columns = ITEM_COLUMNS
    required = ITEM_REQUIRED

    def prepare(self) -> None:
        # `given` lists the columns a row sets: an NDJSON line without a key leaves that column alone.
        self.conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE {} (seq bigint NOT NULL, item_id text NOT NULL, title text, category text,"
                " price numeric(14, 2), in_stock boolean, properties jsonb, given text[] NOT NULL) ON COMMIT DROP"
            ).format(_STAGE)
        )
        self.given: set[str] = set()

    def convert(self, values: dict[str, Any], problems: list[str]) -> Row:
        given = [c for c in ITEM_COLUMNS[1:] if c in values]
        self.given.update(given)
        properties = fields.parse(values, "properties", fields.json_object, problems)
        return (
            fields.identifier(values, "item_id", problems, required=True),
            fields.parse(values, "title", fields.text, problems),
            fields.parse(values, "category", fields.text, problems),
            fields.parse(values, "price", fields.price, problems),
            fields.parse(values, "in_stock", fields.boolean, problems, nullable=False),
            # Given but empty (or null) clears the properties: the column is NOT NULL, so '{}'.
            "{}" if properties is None and "properties" in values else properties,
            given,
        )

    def copy(self, rows: list[Row]) -> None:
        with self.conn.cursor() as cur:
            with cur.copy(sql.SQL("COPY {} FROM STDIN").format(_STAGE)) as copy:
                # seq keeps the file order, so that the last row for an item wins.
                for seq, row in enumerate(rows, start=self.sent):
                    copy.write_row((seq, *row))

    def finish(self) -> None:
        cur = self.conn.cursor(row_factory=dict_row)
        cur.execute(sql.SQL("CREATE INDEX ON {} (item_id, seq)").format(_STAGE))
        cur.execute(sql.SQL("ANALYZE {}").format(_STAGE))
        cur.execute(
            sql.SQL("DELETE FROM {} s USING {} t WHERE t.item_id = s.item_id AND t.seq > s.seq").format(
                _STAGE, _STAGE
            )
        )
        self.report.duplicates = cur.rowcount
        row = cur.execute(_upsert_items([c for c in ITEM_COLUMNS[1:] if c in self.given])).fetchone()
        assert row is not None
        self.report.loaded = row["stored"]
        self.report.inserted = row["inserted"]


# A new item gets the table default for a column its row does not give.
_ITEM_DEFAULTS = {"in_stock": sql.SQL("true"), "properties": sql.SQL("'{}'::jsonb")}


def _upsert_items(columns: list[str]) -> sql.Composed:
    """Build the upsert from staging: only ``columns`` are written, and per row only those it gives."""
    names = [sql.Identifier(c) for c in columns]
    values = [
        sql.SQL("coalesce(s.{}, {})").format(sql.Identifier(c), _ITEM_DEFAULTS[c])
        if c in _ITEM_DEFAULTS
        else sql.SQL("s.{}").format(sql.Identifier(c))
        for c in columns
    ]
    conflict: sql.Composable = sql.SQL("DO NOTHING")
    if columns:
        keep_or_set = [
            sql.SQL("CASE WHEN {} = ANY(s.given) THEN s.{} ELSE i.{} END").format(
                sql.Literal(c), sql.Identifier(c), sql.Identifier(c)
            )
            for c in columns
        ]
        conflict = sql.SQL(
            "DO UPDATE SET ({}) = (SELECT {} FROM {} s WHERE s.item_id = excluded.item_id)"
        ).format(sql.SQL(", ").join(names), sql.SQL(", ").join(keep_or_set), _STAGE)
    return sql.SQL(
        "WITH up AS (INSERT INTO recsql.items AS i (item_id{}) SELECT s.item_id{} FROM {} s"
        " ON CONFLICT (item_id) {} RETURNING (i.xmax = 0) AS inserted)"
        " SELECT count(*) AS stored, count(*) FILTER (WHERE inserted) AS inserted FROM up"
    ).format(
        sql.SQL("").join(sql.SQL(", {}").format(n) for n in names),
        sql.SQL("").join(sql.SQL(", {}").format(v) for v in values),
        _STAGE,
        conflict,
    )


__all__ = ["ImportInterrupted", "ImportReport", "Rejected", "import_events", "import_items"]
