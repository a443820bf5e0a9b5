"""Who is calling: API keys and their scopes, browser origins (CORS), anonymous tracking, rate limits."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask, Response, current_app, g, request

from recsql import keys
from web import body, pool
from web.errors import ApiError
from web.ratelimit import RateLimiter, retry_after

TRACK = "track"
_CORS_METHODS = "POST, OPTIONS"
_CORS_HEADERS = "Authorization, Content-Type, X-Anonymous-Id"


def _same_origin(origin: str) -> bool:
    return origin.rstrip("/") == request.host_url.rstrip("/")


def _presented_key(scope: str | None) -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            raise ApiError(401, "invalid_authorization", "send the key as 'Authorization: Bearer <key>'")
        return token.strip()
    if scope == TRACK:
        # Publishable keys may travel in the query string or the body: sendBeacon cannot set headers.
        return request.args.get("key") or body.key()
    return None


def authorize(scope: str | None) -> None:
    """Admit the request for ``scope`` or raise 401/403/429; remembers the key and CORS origin on ``g``."""
    if scope is None:
        return
    cfg = current_app.config
    origin = request.headers.get("Origin")
    presented = None if cfg["OPEN_ACCESS"] else _presented_key(scope)
    key = None
    if presented is not None:
        key = _keys(current_app).authenticate(pool.conn, presented)
        if key is None:
            raise ApiError(
                401, "invalid_key", "unknown or malformed API key; create one with `recsql keys create`"
            )
        if key.revoked:
            raise ApiError(401, "revoked_key", f"API key {key.key_id} was revoked")
        if not key.allows(scope):
            raise ApiError(
                403,
                "insufficient_scope",
                f"this is a {key.scope} key; this endpoint needs a {scope} (or higher) key",
            )
        if origin and not _same_origin(origin):
            if scope != TRACK or not key.allows_origin(origin):
                raise ApiError(
                    403,
                    "origin_not_allowed",
                    f"origin {origin} may not use this key; add it with `recsql keys create --origin {origin}`"
                    if scope == TRACK
                    else "secret keys must not be used from a browser on another origin",
                )
            g.cors_origin = origin
    elif cfg["OPEN_ACCESS"] or (scope == TRACK and cfg["ALLOW_ANONYMOUS_TRACKING"]):
        if origin and not _same_origin(origin) and not cfg["OPEN_ACCESS"]:
            raise ApiError(
                403,
                "origin_not_allowed",
                f"tracking without a key only works from this server's own pages, not {origin}",
            )
    else:
        raise ApiError(
            401,
            "missing_key",
            f"this endpoint needs an API key with scope {scope}: send 'Authorization: Bearer <key>'",
        )
    g.api_key = key
    _limit(key)


def _limit(key: keys.ApiKey | None) -> None:
    cfg = current_app.config
    client = request.remote_addr or "unknown"
    if key is None:
        ident, rate = f"ip:{client}", cfg["RATE_LIMIT_ANONYMOUS"]
    elif key.scope == TRACK:
        # A publishable key is public: limit each client, so one abuser cannot starve the shop.
        ident, rate = f"key:{key.key_id}:{client}", key.rate_limit or cfg["RATE_LIMIT_TRACK"]
    else:
        ident, rate = f"key:{key.key_id}", key.rate_limit or cfg["RATE_LIMIT"]
    wait = _limiter(current_app).take(ident, float(rate) / cfg["RATE_LIMIT_DIVISOR"])
    if wait > 0:
        raise ApiError(
            429,
            "rate_limited",
            f"rate limit of {rate} requests/s exceeded; retry after {retry_after(wait)} s",
            headers={"Retry-After": retry_after(wait)},
        )


def _keys(app: Flask) -> keys.KeyCache:
    return app.extensions["recsql_keys"]  # type: ignore[no-any-return]


def _limiter(app: Flask) -> RateLimiter:
    return app.extensions["recsql_limiter"]  # type: ignore[no-any-return]


class _OriginCache:
    """Every origin some active track key allows, refreshed every few seconds (for preflights)."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._at = -1e9
        self._origins: set[str] = set()
        self._lock = threading.Lock()

    def allows(self, origin: str) -> bool:
        now = time.monotonic()
        if now - self._at > self.ttl:
            origins = keys.track_origins(pool.conn())
            with self._lock:
                self._origins = origins
                self._at = now
        return "*" in self._origins or origin.rstrip("/") in self._origins


def _preflight() -> Response | None:
    """Answer CORS preflights for tracking endpoints: allowed origins get the headers, others nothing."""
    if request.method != "OPTIONS" or request.url_rule is None:
        return None
    op = _operation_for(request.url_rule.rule)
    origin = request.headers.get("Origin")
    resp = current_app.make_default_options_response()
    if op is not None and origin and current_app.extensions["recsql_origins"].allows(origin):
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
        resp.headers["Access-Control-Allow-Headers"] = _CORS_HEADERS
        resp.headers["Access-Control-Allow-Credentials"] = "true"
        resp.headers["Access-Control-Max-Age"] = "600"
        resp.headers["Vary"] = "Origin"
    return resp


def _operation_for(rule: str) -> Any:
    from web.spec import REGISTRY

    for op in REGISTRY:
        if op.rule == rule and op.scope == TRACK:
            return op
    return None


def _cors_headers(resp: Response) -> Response:
    origin = g.get("cors_origin")
    if origin:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Credentials"] = "true"
        resp.headers["Access-Control-Expose-Headers"] = "X-Anonymous-Id, Retry-After"
        resp.headers.add("Vary", "Origin")
    return resp


def init_app(app: Flask) -> None:
    app.extensions["recsql_keys"] = keys.KeyCache(ttl=app.config["KEY_CACHE_SECONDS"])
    app.extensions["recsql_limiter"] = RateLimiter()
    app.extensions["recsql_origins"] = _OriginCache(ttl=app.config["KEY_CACHE_SECONDS"])
    app.before_request(_preflight)
    app.after_request(_cors_headers)
