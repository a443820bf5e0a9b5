"""Every failure leaves as JSON {"error": {code, message, field}} with a fitting status, never a bare 500."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from recsql.errors import BadInput, DatabaseUnavailable, NotFound, RecsqlError, SchemaMissing

log = logging.getLogger("recsql.web")


class ApiError(Exception):
    """An error response: HTTP status, stable code, a message a developer can act on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def payload(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "field": self.field}


def from_recsql(exc: RecsqlError) -> ApiError:
    """The HTTP form of a domain error."""
    if isinstance(exc, BadInput):
        return ApiError(422, exc.code, str(exc), _camel(exc.field))
    if isinstance(exc, NotFound):
        return ApiError(404, exc.code, str(exc))
    if isinstance(exc, SchemaMissing):
        return ApiError(503, "schema_missing", str(exc))
    if isinstance(exc, DatabaseUnavailable):
        return ApiError(503, "database_unavailable", "the database is unavailable; retry shortly")
    log.error("unexpected recsql error: %s", exc)
    return ApiError(500, "internal_error", "unexpected error; it has been logged")


_FIELDS = {
    "user_id": "userId",
    "item_id": "productId",
    "event_type": "eventType",
    "event_id": "eventId",
    "session_id": "sessionId",
    "ts": "timestamp",
    "in_stock": "inStock",
}


def _camel(name: str | None) -> str | None:
    return _FIELDS.get(name, name) if name else name


def response(err: ApiError) -> Response:
    from web import metrics  # metrics needs the pool, which needs errors: import late

    metrics.error(err.status, err.code)
    resp = jsonify(error=err.payload())
    resp.status_code = err.status
    for name, value in err.headers.items():
        resp.headers[name] = value
    return resp


_HTTP_CODES = {
    400: "bad_request",
    404: "route_not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def register(app: Flask) -> None:
    """Install the handlers that turn every exception into a JSON error."""

    @app.errorhandler(ApiError)
    def _api(err: ApiError) -> Response:
        return response(err)

    @app.errorhandler(RecsqlError)
    def _domain(err: RecsqlError) -> Response:
        return response(from_recsql(err))

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Response:
        status = err.code or 500
        message = err.description or err.name
        if status == 413:
            message = "request body too large; send at most 2 MiB (batches of at most 1000 events)"
        resp = response(ApiError(status, _HTTP_CODES.get(status, "http_error"), message))
        if status == 405 and hasattr(err, "valid_methods") and err.valid_methods:
            resp.headers["Allow"] = ", ".join(err.valid_methods)
        return resp

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("unhandled error")
        return response(ApiError(500, "internal_error", "unexpected error; it has been logged"))
