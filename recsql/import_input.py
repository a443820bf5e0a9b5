"""Reading an import file as records: CSV or NDJSON, plain or gzip, from a path or stdin.

Lines are decoded one at a time, so a bad byte sequence rejects one row instead of the whole file,
and each record keeps its first line number and raw text for the report.
"""

from __future__ import annotations

import csv
import gzip
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from recsql.errors import BadInput
from recsql.import_fields import loads

FORMATS = ("csv", "ndjson")
_SUFFIXES = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson"}
_GZIP_MAGIC = b"\x1f\x8b"

Records = Iterator["Record"]
Opened = tuple[Records, int | None, Callable[[], int] | None]


@dataclass
class Record:
    """One input row: its values by column, or why it could not be parsed."""

    line: int
    raw: str
    values: dict[str, Any] | None
    error: str | None = None


def infer_format(source: Path, fmt: str | None) -> str:
    """The explicit format, else the one the extension names (stdin: csv)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise BadInput(f"unknown format {fmt!r}; use csv or ndjson", field="format")
        return fmt
    if str(source) == "-":
        return "csv"
    suffixes = [s.lower() for s in source.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    found = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise BadInput(
            f"cannot tell the format of {source} from its extension; name it .csv or .ndjson"
            " (.jsonl, .json; optionally .gz), or pass --format csv|ndjson",
            field="format",
        )
    return found


@contextmanager
def open_records(
    source: Path, fmt: str | None, kind: str, allowed: tuple[str, ...], required: tuple[str, ...]
) -> Iterator[Opened]:
    """Yield (records, total bytes or None, position in bytes) for ``source``; '-' is stdin."""
    fmt = infer_format(source, fmt)
    with ExitStack() as stack:
        stream, total, position = _open(source, stack)
        lines = _Lines(stream, "stdin" if str(source) == "-" else str(source))
        if fmt == "csv":
            records = _csv_records(lines, kind, allowed, required)
        else:
            records = _ndjson_records(lines, kind, allowed)
        yield records, total, position


def _open(source: Path, stack: ExitStack) -> tuple[IO[bytes], int | None, Callable[[], int] | None]:
    if str(source) == "-":
        raw: IO[bytes] = sys.stdin.buffer
        gz = hasattr(raw, "peek") and raw.peek(2)[:2] == _GZIP_MAGIC
    else:
        try:
            raw = stack.enter_context(source.open("rb"))
        except OSError as exc:
            raise BadInput(f"cannot read {source}: {exc.strerror or exc}", field="file") from exc
        gz = source.suffix.lower() == ".gz"
    total = _regular_file_size(raw)
    position = raw.tell if total else None
    stream: IO[bytes] = raw
    if gz:
        stream = cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")))
    return stream, total, position


def _regular_file_size(stream: IO[bytes]) -> int | None:
    try:
        st = os.fstat(stream.fileno())
        stream.tell()
    except (OSError, ValueError):  # pipes, BytesIO (io.UnsupportedOperation is both)
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class _Lines:
    """Decode lines one by one, remembering the ones the current record spans."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self._stream = iter(stream)
        self._name = name
        self.number = 0
        self.pending: list[str] = []
        self.bad: str | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        try:
            data = next(self._stream)
        except (OSError, EOFError, zlib.error) as exc:  # a damaged or truncated .gz file
            raise BadInput(f"cannot read {self._name} after line {self.number}: {exc}") from exc
        self.number += 1
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            text = data.decode("utf-8", "replace")
            self.bad = (
                self.bad
                or f"is not valid UTF-8 (byte {exc.start + 1} of line {self.number}); save the file as UTF-8"
            )
        if self.number == 1:
            text = text.removeprefix("\ufeff")
        self.pending.append(text)
        return text

    def take(self, values: dict[str, Any] | None, error: str | None = None) -> Record:
        """Close the current record: it spans the lines read since the previous one."""
        first = self.number - len(self.pending) + 1
        record = Record(first, "".join(self.pending), values, self.bad or error)
        self.pending.clear()
        self.bad = None
        return record


def _check_columns(names: list[str], kind: str, allowed: tuple[str, ...], where: str) -> None:
    unknown = [n for n in names if n not in allowed]
    if unknown:
        listed = ", ".join(f'"{n}"' for n in unknown)
        raise BadInput(
            f"{where}unknown column(s) {listed}: {kind} files may only have the columns"
            f" {', '.join(allowed)}. Rename or remove them.",
            code="unknown_column",
        )


def _csv_records(lines: _Lines, kind: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> Records:
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise BadInput(
            f"the input is empty: a CSV file needs a header row, e.g. {','.join(required)}"
        ) from None
    except csv.Error as exc:
        raise BadInput(f"cannot read the CSV header row: {exc}") from exc
    if lines.bad:
        raise BadInput(f"the header row {lines.bad}")
    names = [n.strip() for n in header]
    if names and names[0].startswith(("{", "[")):
        raise BadInput(
            "the header row looks like JSON: for NDJSON name the file .ndjson or .jsonl,"
            " or pass --format ndjson"
        )
    _check_columns(names, kind, allowed, "")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise BadInput(f"column(s) {', '.join(twice)} appear more than once in the header row")
    missing = [c for c in required if c not in names]
    if missing:
        raise BadInput(
            f"missing required column(s) {', '.join(missing)}: the header row must name"
            f" {', '.join(required)} (optional: {', '.join(c for c in allowed if c not in required)})"
        )
    lines.take(None)
    return _csv_rows(reader, lines, names)


def _csv_rows(reader: Any, lines: _Lines, names: list[str]) -> Records:
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield lines.take(None, f"is not valid CSV ({exc})")
            continue
        if not cells:  # a blank line
            lines.take(None)
            continue
        if len(cells) != len(names):
            yield lines.take(
                None,
                f"has {len(cells)} fields but the header has {len(names)}; quote values that contain commas",
            )
            continue
        yield lines.take(dict(zip(names, cells, strict=True)))


def _ndjson_records(lines: _Lines, kind: str, allowed: tuple[str, ...]) -> Records:
    for text in lines:
        if not text.strip():
            lines.take(None)
            continue
        if lines.bad:
            yield lines.take(None)
            continue
        try:
            values = loads(text)
        except ValueError as exc:
            if lines.number == 1 and text.lstrip().startswith("["):
                raise BadInput("the input is a JSON array; NDJSON needs one JSON object per line") from exc
            yield lines.take(None, f"is not valid JSON ({exc})")
            continue
        if not isinstance(values, dict):
            yield lines.take(None, 'is not a JSON object; each line must be one object like {"item_id": "a"}')
            continue
        _check_columns(list(values), kind, allowed, f"line {lines.number}: ")
        yield lines.take(values)
