"""The exception hierarchy, and the one place psycopg errors become domain errors."""

from __future__ import annotations

import psycopg
from psycopg import errors as pg_errors


class RecsqlError(Exception):
    """Base of every error recsql raises on purpose; the message says what to do."""


class BadInput(RecsqlError):
    """The caller sent something invalid; nothing was changed."""

    def __init__(self, message: str, *, code: str = "bad_input", field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


class NotFound(RecsqlError):
    """A named user, item or key does not exist."""

    def __init__(self, message: str, *, code: str = "not_found") -> None:
        super().__init__(message)
        self.code = code


class DatabaseUnavailable(RecsqlError):
    """The database cannot be reached or started."""


class SchemaMissing(RecsqlError):
    """The database is reachable but recsql's schema is not installed or not current."""


# Constraint name -> (stable error code, field, message prefix). Names are fixed in sql/.
_CONSTRAINTS: dict[str, tuple[str, str | None, str]] = {
    "events_event_type_fkey": ("unknown_event_type", "event_type", "unknown event type"),
    "events_ts_check": ("timestamp_in_future", "ts", "timestamp too far in the future"),
    "events_value_range_check": ("value_out_of_range", "value", "value out of range"),
    "events_value_check": ("invalid_value", "value", "value must be a finite number"),
    "events_user_id_check": (
        "invalid_user_id",
        "user_id",
        "user_id must be 1-256 characters without control characters",
    ),
    "events_item_id_check": (
        "invalid_item_id",
        "item_id",
        "item_id must be 1-256 characters without control characters",
    ),
    "events_event_id_check": (
        "invalid_event_id",
        "event_id",
        "event_id must be 1-256 characters without control characters",
    ),
    "events_session_id_check": (
        "invalid_session_id",
        "session_id",
        "session_id must be at most 256 characters",
    ),
    "events_properties_check": ("invalid_properties", "properties", "properties must be a JSON object"),
    "events_event_id_key": (
        "duplicate_event_id",
        "event_id",
        "another writer stored the same event_id at the same moment; send it again and it is"
        " skipped (recsql.track() then reports it as a duplicate)",
    ),
    "items_item_id_check": (
        "invalid_item_id",
        "item_id",
        "item_id must be 1-256 characters without control characters",
    ),
    "items_price_check": ("invalid_price", "price", "price must not be negative"),
    "items_properties_check": ("invalid_properties", "properties", "properties must be a JSON object"),
}


def translate(exc: psycopg.Error) -> RecsqlError:
    """Turn a database error into the matching recsql error, keeping the server's message."""
    diag = exc.diag
    message = diag.message_primary or str(exc)
    if diag.message_hint:
        message = f"{message}. {diag.message_hint}"
    name = diag.constraint_name
    if name in _CONSTRAINTS:
        code, field, prefix = _CONSTRAINTS[name]
        if not message.startswith(("unknown event type", "event ")):
            message = f"{prefix} ({message})"
        return BadInput(message, code=code, field=field)
    if isinstance(exc, pg_errors.NotNullViolation):
        column = diag.column_name or "a required field"
        return BadInput(f"{column} is required", code="missing_field", field=column)
    if isinstance(exc, pg_errors.UndefinedTable | pg_errors.UndefinedFunction | pg_errors.InvalidSchemaName):
        return SchemaMissing(f"{message}. Run `recsql db upgrade` to install the schema.")
    if isinstance(exc, pg_errors.DataError | pg_errors.IntegrityError | pg_errors.NullValueNotAllowed):
        return BadInput(message)
    if isinstance(exc, psycopg.OperationalError):
        return DatabaseUnavailable(message)
    return RecsqlError(message)
