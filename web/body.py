"""Request bodies: content type, size and JSON syntax checked once, parsed once per request."""

from __future__ import annotations

import json
from typing import Any

from flask import g, request

from web.errors import ApiError

_MISSING = object()
JSON = "application/json"
NDJSON = "application/x-ndjson"
BEACON = "text/plain"  # what navigator.sendBeacon sends for a string


def _media_type() -> str:
    return (request.mimetype or "").lower()


def _check_type(allowed: tuple[str, ...]) -> str:
    media = _media_type()
    if media not in allowed:
        got = media or "no Content-Type"
        raise ApiError(415, "unsupported_media_type", f"send {' or '.join(allowed)}, not {got}")
    return media


def _text() -> str:
    raw = request.get_data(cache=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"body is not UTF-8 (byte {exc.start})") from exc


def _parse(text: str, where: str = "body") -> Any:
    if not text.strip():
        raise ApiError(400, "empty_body", f"{where} is empty; send a JSON document")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise ApiError(400, "invalid_json", f"{where} is not valid JSON: {detail}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def document(allowed: tuple[str, ...] = (JSON,)) -> Any:
    """The parsed body. NDJSON becomes a list of documents; text/plain is read as JSON (sendBeacon)."""
    cached = g.get("body", _MISSING)
    if cached is not _MISSING:
        return cached
    media = _check_type(allowed)
    text = _text()
    if media == NDJSON:
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise ApiError(400, "empty_body", "body is empty; send one JSON event per line")
        value: Any = [_parse(line, f"line {n}") for n, line in enumerate(lines, 1)]
    else:
        value = _parse(text)
    g.body = value
    return value


def key() -> str | None:
    """A publishable key carried in a JSON object body as "key" (sendBeacon cannot set headers)."""
    if _media_type() not in (JSON, BEACON) or request.content_length == 0:
        return None
    try:
        doc = document((JSON, BEACON))
    except ApiError:
        return None  # the view reports the body's problem after authentication
    if isinstance(doc, dict) and isinstance(doc.get("key"), str):
        return str(doc["key"])
    return None
