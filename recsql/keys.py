"""API keys: creation, listing, revocation and verification. Only a SHA-256 of a key is stored.

A key reads ``rs_<scope>_<key id>_<secret>``. The key id locates the row; the whole key is hashed
and compared in constant time. Keys carry 192 random bits, so a fast hash is enough (a slow,
salted hash protects guessable passwords, not random tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg

from recsql.errors import BadInput, NotFound, translate

SCOPES = ("track", "read", "admin")
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}
_KEY = re.compile(r"^rs_(track|read|admin)_([a-z0-9]{12})_([A-Za-z0-9_-]{32})$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class ApiKey:
    """A stored key as the server needs it to authorise a request."""

    key_id: str
    name: str
    scope: str
    secret_hash: bytes
    allowed_origins: tuple[str, ...]
    rate_limit: int | None
    revoked: bool

    def allows(self, scope: str) -> bool:
        """Whether this key may act with ``scope`` (track < read < admin)."""
        return not self.revoked and _RANK[self.scope] >= _RANK[scope]

    def allows_origin(self, origin: str) -> bool:
        """Whether a browser page from ``origin`` may use this key."""
        return "*" in self.allowed_origins or origin.rstrip("/") in self.allowed_origins


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    key: str


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def normalise_origin(origin: str) -> str:
    """Return ``scheme://host[:port]``, or raise BadInput for anything else ('*' allows any)."""
    if origin == "*":
        return origin
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise BadInput(
            f"origin {origin!r} must look like https://shop.example.com (scheme, host, optional port; no path)",
            code="invalid_origin",
            field="allowed_origins",
        )
    if parts.query or parts.fragment:
        raise BadInput(f"origin {origin!r} must not have a query or fragment", code="invalid_origin")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def create(
    conn: Conn,
    scope: str,
    *,
    name: str = "",
    allowed_origins: list[str] | tuple[str, ...] = (),
    rate_limit: int | None = None,
) -> CreatedKey:
    """Create a key; the returned plaintext is the only copy (the database keeps a hash)."""
    if scope not in SCOPES:
        raise BadInput(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}", code="invalid_scope")
    if rate_limit is not None and rate_limit < 1:
        raise BadInput(
            "rate limit must be a positive number of requests per second", code="invalid_rate_limit"
        )
    origins = sorted({normalise_origin(o) for o in allowed_origins})
    key_id = "".join(secrets.choice(_ALPHABET) for _ in range(12))
    key = f"rs_{scope}_{key_id}_{secrets.token_urlsafe(24)}"
    try:
        conn.execute(
            "INSERT INTO recsql.api_keys (key_id, name, scope, secret_hash, allowed_origins, rate_limit)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (key_id, name, scope, _hash(key), origins, rate_limit),
        )
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return CreatedKey(key_id=key_id, key=key)


def list_keys(conn: Conn) -> list[dict[str, Any]]:
    """Every key without its hash, newest first."""
    return list(
        conn.execute(
            "SELECT key_id, name, scope, allowed_origins, rate_limit, created_at, revoked_at"
            " FROM recsql.api_keys ORDER BY created_at DESC, key_id"
        ).fetchall()
    )


def revoke(conn: Conn, key_id: str) -> None:
    """Revoke a key (it stays listed, marked revoked); NotFound when no such key exists."""
    row = conn.execute(
        "UPDATE recsql.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s RETURNING key_id",
        (key_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no API key with id {key_id!r}; `recsql keys list` shows them", code="key_not_found")


def track_origins(conn: Conn) -> set[str]:
    """Every origin some active track key allows (answering CORS preflights needs no key)."""
    rows = conn.execute(
        "SELECT DISTINCT unnest(allowed_origins) AS o FROM recsql.api_keys WHERE revoked_at IS NULL AND scope = 'track'"
    ).fetchall()
    return {r["o"] for r in rows}


def parse(presented: str) -> tuple[str, str] | None:
    """(scope, key id) of a well-formed key, or None."""
    m = _KEY.match(presented)
    return (m.group(1), m.group(2)) if m else None


def lookup(conn: Conn, key_id: str) -> ApiKey | None:
    row = conn.execute(
        "SELECT key_id, name, scope, secret_hash, allowed_origins, rate_limit, revoked_at IS NOT NULL AS revoked"
        " FROM recsql.api_keys WHERE key_id = %s",
        (key_id,),
    ).fetchone()
    if row is None:
        return None
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        scope=row["scope"],
        secret_hash=bytes(row["secret_hash"]),
        allowed_origins=tuple(row["allowed_origins"]),
        rate_limit=row["rate_limit"],
        revoked=row["revoked"],
    )


def matches(key: ApiKey, presented: str) -> bool:
    """Constant-time comparison of the presented key with the stored hash."""
    return hmac.compare_digest(key.secret_hash, _hash(presented))


class KeyCache:
    """Per-process cache of stored keys so that a request does not cost a query.

    Entries live ``ttl`` seconds: a revocation takes effect within that time in every process.
    """

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, connect: Callable[[], Conn], presented: str) -> ApiKey | None:
        """The stored key matching ``presented`` (revoked ones included), or None.

        ``connect`` is called only when the key must be read from the database (not cached).
        """
        parsed = parse(presented)
        if parsed is None:
            return None
        key_id = parsed[1]
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key_id)
        if entry is None or now - entry[0] > self.ttl:
            entry = (now, lookup(connect(), key_id))
            with self._lock:
                if len(self._entries) > 10_000:
                    self._entries.clear()  # bounded: a flood of made-up ids cannot grow it
                self._entries[key_id] = entry
        key = entry[1]
        if key is None or not matches(key, presented):
            return None
        return key

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
