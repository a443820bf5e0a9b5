"""Tracking: single events from a shop page, batches from the tracker or a backend, identify."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.blueprints import BlueprintSetupState

from recsql import api, serving
from web import body, metrics, pool, schemas
from web.errors import ApiError, from_recsql
from web.spec import BodyValidator, operation, validate

bp = Blueprint("tracking", __name__)

COOKIE = "recsql_aid"
HEADER = "X-Anonymous-Id"
_COOKIE_AGE = 365 * 24 * 3600
_ID = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,256}$")
_EVENT = BodyValidator(schemas.EVENT)
_TYPES = (body.JSON, body.BEACON)


@bp.record_once
def _create_queue(state: BlueprintSetupState) -> None:
    state.app.extensions["recsql_track_queue"] = serving.TrackQueue()


def _queue() -> serving.TrackQueue:
    return current_app.extensions["recsql_track_queue"]  # type: ignore[no-any-return]


def _anonymous_id(explicit: str | None = None) -> tuple[str, bool]:
    """The caller's anonymous id and whether the response must (re)set the cookie."""
    if explicit:
        return explicit, request.cookies.get(COOKIE) != explicit
    header = request.headers.get(HEADER)
    if header is not None:
        if not _ID.match(header):
            raise ApiError(
                422, "invalid_anonymous_id", f"{HEADER} must be 1-256 characters without control characters"
            )
        return header, request.cookies.get(COOKIE) != header
    cookie = request.cookies.get(COOKIE)
    if cookie and _ID.match(cookie):
        return cookie, False
    return str(uuid.uuid4()), True


def _remember(resp: Response, anonymous_id: str | None, set_cookie: bool) -> Response:
    if anonymous_id is not None:
        resp.headers[HEADER] = anonymous_id
        if set_cookie:
            resp.set_cookie(
                COOKIE, anonymous_id, max_age=_COOKIE_AGE, samesite="Lax", secure=request.is_secure
            )
    return resp


def _timestamp(raw: Any, where: str) -> datetime | None:
    if raw is None:
        return None
    if isinstance(raw, int | float):  # JSON Schema counts 5.0 as an integer
        return datetime.fromtimestamp(raw / 1000, tz=UTC)
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ApiError(
            422,
            "invalid_timestamp",
            f"{where} must be ISO 8601 like 2026-11-27T10:00:00Z or epoch milliseconds",
            where,
        ) from exc
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _event(doc: dict[str, Any], user_id: str, where: str = "") -> serving.Event:
    prefix = f"{where}." if where else ""
    return serving.Event(
        user_id=user_id,
        item_id=doc.get("productId") or doc["itemId"],
        event_type=doc["eventType"],
        ts=_timestamp(doc.get("timestamp"), f"{prefix}timestamp"),
        value=doc.get("value"),
        event_id=doc.get("eventId"),
        session_id=doc.get("sessionId"),
        properties=doc.get("properties") or {},
        recommendation_id=doc.get("recommendationId"),
    )


@operation(
    bp,
    "POST",
    "/track-event",
    summary="Track one event from a shop page",
    scope="track",
    body=schemas.EVENT,
    response=schemas.TRACKED,
    description="Also takes the same JSON sent as text/plain (navigator.sendBeacon). "
    "The user is userId, else anonymousId, else the X-Anonymous-Id header, else the recsql_aid "
    "cookie, else a new anonymous id (returned in X-Anonymous-Id and set as the cookie).",
)
def track_event() -> Response:
    doc = body.document(_TYPES)
    validate(g.operation, doc)
    anonymous, set_cookie = (None, False) if doc.get("userId") else _anonymous_id(doc.get("anonymousId"))
    user_id = doc.get("userId") or anonymous
    assert user_id is not None
    # Concurrent requests share one INSERT and one commit; each returns once its event is stored.
    outcome = _queue().track(pool.conn, _event(doc, user_id))
    if outcome.error is not None:
        raise outcome.error
    metrics.events(outcome.status, 1)  # accepted or duplicate
    resp = jsonify(status=outcome.status, eventId=outcome.event_id, userId=user_id)
    return _remember(resp, anonymous, set_cookie)


@operation(
    bp,
    "POST",
    "/v1/events",
    summary="Track a batch of events",
    scope="track",
    body=schemas.EVENT_BATCH,
    response=schemas.BATCH_RESULT,
    description=f"Up to {schemas.MAX_BATCH} events, as a JSON array, as {{events, key}}, as NDJSON "
    "(application/x-ndjson, one event per line) or as JSON in text/plain (sendBeacon). Each event is stored whole or not at all, on its own: a bad "
    "event is reported in results (status rejected, with its error) and the others are stored. "
    "A repeated eventId is reported as duplicate and counted once.",
)
def track_batch() -> Response:
    doc = body.document((body.JSON, body.NDJSON, body.BEACON))
    if isinstance(doc, list) and len(doc) > schemas.MAX_BATCH:
        raise ApiError(
            422, "batch_too_large", f"at most {schemas.MAX_BATCH} events per request, got {len(doc)}"
        )
    validate(g.operation, doc)
    docs: list[Any] = doc if isinstance(doc, list) else doc["events"]
    anonymous: str | None = None
    set_cookie = False
    results: list[dict[str, Any] | None] = [None] * len(docs)
    valid: list[tuple[int, serving.Event]] = []
    for i, ev_doc in enumerate(docs):
        problem = _EVENT.problem(ev_doc, f"[{i}]")
        if problem is None:
            try:
                user_id = ev_doc.get("userId")
                if not user_id:
                    if anonymous is None:
                        anonymous, set_cookie = _anonymous_id(ev_doc.get("anonymousId"))
                    user_id = ev_doc.get("anonymousId") or anonymous
                valid.append((i, _event(ev_doc, user_id, f"[{i}]")))
                continue
            except ApiError as err:
                problem = err
        results[i] = {
            "index": i,
            "status": "rejected",
            "eventId": _event_id(ev_doc),
            "error": problem.payload(),
        }
    outcomes = serving.track_many(pool.conn(), [ev for _, ev in valid]) if valid else []
    for (i, _), out in zip(valid, outcomes, strict=True):
        entry: dict[str, Any] = {"index": i, "status": out.status, "eventId": out.event_id}
        if out.error is not None:
            entry["error"] = from_recsql(out.error).payload()
        results[i] = entry
    counts = {
        s: sum(1 for r in results if r and r["status"] == s) for s in ("accepted", "duplicate", "rejected")
    }
    for status, n in counts.items():
        metrics.events(status, n)
    resp = jsonify(
        accepted=counts["accepted"],
        duplicates=counts["duplicate"],
        rejected=counts["rejected"],
        results=results,
    )
    return _remember(resp, anonymous, set_cookie)


def _event_id(doc: Any) -> str | None:
    value = doc.get("eventId") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


@operation(
    bp,
    "POST",
    "/v1/identify",
    summary="Link an anonymous id to a signed-in user",
    scope="track",
    body=schemas.IDENTIFY,
    response=schemas.IDENTIFIED,
    description="Typically sent by the tracker when a visitor signs in. From now on the anonymous id's events count for the user's recommendations "
    "(and recsql.forget_user of the user forgets them too).",
)
def identify() -> Response:
    doc = body.document(_TYPES)
    validate(g.operation, doc)
    anonymous = doc["anonymousId"]
    user_id = api.identify(pool.conn(), anonymous, doc["userId"])
    return jsonify(userId=user_id, anonymousId=anonymous)
