"""Parsing and checking one field of an imported row, mirroring the database's rules.

Every check here has a twin in sql/ (a CHECK constraint or trigger); doing it in Python first lets an
import report every bad row with its line number instead of failing on the first one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ID_CHARS = 256
MAX_ABS_VALUE = 1e12  # events_value_check
MAX_PRICE = Decimal(10) ** 12  # numeric(14, 2)
EPOCH_MS_ABOVE = 1e11  # a larger epoch number is in milliseconds (1e11 s is the year 5138)

# PostgreSQL's [[:cntrl:]] in a UTF-8 database (C0, DEL and C1 controls), plus lone surrogates:
# JSON escapes like "\ud800" make strings that cannot be encoded to UTF-8 at all.
_BAD_ID_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# PostgreSQL text cannot hold NUL.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
_CENTS = Decimal("0.01")


def _show(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return '"' + (text if len(text) <= 40 else text[:40] + "...") + '"'


def identifier(values: dict[str, Any], name: str, problems: list[str], *, required: bool) -> str | None:
    """An id column: 1-256 characters, no control characters; integers are taken as text."""
    value = values.get(name)
    if value is None or value == "":
        if required:
            problems.append(f"{name} is {'missing' if name not in values or value is None else 'empty'}")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        problems.append(f"{name} must be a string, got {_show(value)}")
        return None
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        problems.append(f"{name} is {len(text)} characters long; the limit is {MAX_ID_CHARS}")
    elif _BAD_ID_CHAR.search(text):
        problems.append(f"{name} {_show(text)} contains a control character (tab, newline, ...); remove it")
    return text


def parse(
    values: dict[str, Any],
    name: str,
    parser: Callable[[Any], T],
    problems: list[str],
    *,
    nullable: bool = True,
) -> T | None:
    """Parse an optional column; an absent, null or empty value is None (an error if not nullable)."""
    value = values.get(name)
    if value is None or value == "":
        if not nullable and name in values:
            problems.append(f"{name} is empty; give a value, or leave the column out to keep the stored one")
        return None
    try:
        return parser(value)
    except ValueError as exc:
        problems.append(f"{name} {exc}")
        return None


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_show(value)}")
    if _UNSTORABLE.search(value):
        raise ValueError("contains a NUL character or an invalid unicode escape; remove it")
    return value


def session_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    result = text(value)
    if len(result) > MAX_ID_CHARS:
        raise ValueError(f"is {len(result)} characters long; the limit is {MAX_ID_CHARS}")
    return result


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"is {_show(value)}, not a number")
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"is {_show(value)}, not a number") from None


def number(value: Any) -> float:
    """A finite number below 1e12 in absolute value (an event's value)."""
    result = _float(value)
    if not math.isfinite(result) or abs(result) >= MAX_ABS_VALUE:
        raise ValueError(f"is {_show(value)}; it must be a finite number below 1e12 in absolute value")
    return result


def timestamp(value: Any) -> datetime:
    """ISO 8601 (no offset means UTC), or unix epoch seconds, or milliseconds above 1e11."""
    hint = "use ISO 8601 like 2024-05-01T12:00:00Z, or unix epoch seconds or milliseconds"
    if isinstance(value, str) and not _looks_numeric(value):
        try:
            result = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"is {_show(value)}, not a timestamp: {hint}") from None
        return result if result.tzinfo is not None else result.replace(tzinfo=UTC)
    seconds = _float(value)
    if abs(seconds) > EPOCH_MS_ABOVE:
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"is {_show(value)}, out of the range of dates: {hint}") from None


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(data: str) -> Any:
    """Parse JSON the way PostgreSQL does: NaN and Infinity are errors."""
    return json.loads(data, parse_constant=_no_constants)


def json_object(value: Any) -> str:
    """A JSON object (in CSV: its JSON text); returned as JSON text for COPY."""
    if isinstance(value, str):
        try:
            value = loads(value)
        except ValueError as exc:
            raise ValueError(f'is not valid JSON ({exc}); write an object like {{"color": "red"}}') from None
    if not isinstance(value, dict):
        raise ValueError(f'must be a JSON object like {{"color": "red"}}, got {_show(value)}')
    data = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if "\\u0000" in data or _UNSTORABLE.search(data):
        raise ValueError(
            "contains a NUL character or an invalid unicode escape, which PostgreSQL cannot store"
        )
    return data


def price(value: Any) -> Decimal:
    """A number >= 0, rounded to cents like numeric(14, 2)."""
    if isinstance(value, bool):
        raise ValueError(f"is {_show(value)}, not a number")
    try:
        result = Decimal(value.strip() if isinstance(value, str) else repr(value))
    except InvalidOperation:
        raise ValueError(f"is {_show(value)}, not a number") from None
    if not result.is_finite():
        raise ValueError(f"is {_show(value)}, not a finite number")
    if result < 0:
        raise ValueError(f"is {_show(value)}; a price must not be negative")
    # Compare before rounding too: quantize() fails on huge exponents like 1e999999.
    if result >= MAX_PRICE or (result := result.quantize(_CENTS, rounding=ROUND_HALF_UP)) >= MAX_PRICE:
        raise ValueError(f"is {_show(value)}; a price must be below 1,000,000,000,000")
    return result


def boolean(value: Any) -> bool:
    """true/false/1/0/yes/no (any case), or a JSON boolean."""
    if isinstance(value, bool):
        return value
    key = value.strip().lower() if isinstance(value, str) else value
    if isinstance(key, int) and key in (0, 1):
        return bool(key)
    if isinstance(key, str) and key in _BOOLEANS:
        return _BOOLEANS[key]
    raise ValueError(f"is {_show(value)}; use true/false, 1/0 or yes/no")
