"""The operation registry: each view is declared once with its scope, parameters and bodies; the
declaration validates requests and produces /openapi.json."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
from flask import Blueprint, Flask, g
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from web import auth, schemas
from web.errors import ApiError

VERSION = "1.0.0"


@dataclass(frozen=True)
class Param:
    """A query parameter; ``kind`` is integer, boolean or string."""

    name: str
    kind: str
    description: str
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    max_length: int = 256
    choices: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        if self.choices:
            return {"type": "string", "enum": list(self.choices)}
        s: dict[str, Any] = {"type": self.kind}
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        if self.kind == "string":
            s["maxLength"] = self.max_length
            s["pattern"] = "^[^\\u0000-\\u001f\\u007f]*$"
        if self.default is not None:
            s["default"] = self.default
        return s

    def parse(self, raw: str | None) -> Any:
        if raw is None or raw == "":
            return self.default
        if self.kind == "integer":
            if not re.fullmatch(r"-?\d{1,9}", raw):
                raise ApiError(
                    400, "invalid_parameter", f"{self.name} must be an integer, got {raw[:40]!r}", self.name
                )
            value = int(raw)
            if (self.minimum is not None and value < self.minimum) or (
                self.maximum is not None and value > self.maximum
            ):
                raise ApiError(
                    400,
                    "invalid_parameter",
                    f"{self.name} must be between {self.minimum} and {self.maximum}, got {value}",
                    self.name,
                )
            return value
        if self.kind == "boolean":
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ApiError(
                400, "invalid_parameter", f"{self.name} must be true or false, got {raw[:40]!r}", self.name
            )
        if self.choices and raw not in self.choices:
            raise ApiError(
                400, "invalid_parameter", f"{self.name} must be one of {', '.join(self.choices)}", self.name
            )
        if len(raw) > self.max_length or re.search(r"[\x00-\x1f\x7f]", raw):
            raise ApiError(
                400,
                "invalid_parameter",
                f"{self.name} must be at most {self.max_length} characters without control characters",
                self.name,
            )
        return raw


K = Param("k", "integer", "How many items", default=10, minimum=1, maximum=1000)
CATEGORY = Param("category", "string", "Only items of this category")
IN_STOCK = Param("in_stock", "boolean", "Only items in stock", default=False)
METHOD = Param(
    "method",
    "string",
    "cooccurrence, embedding, or hybrid (default: hybrid when the item has an embedding)",
    choices=("cooccurrence", "embedding", "hybrid"),
)


@dataclass
class Operation:
    method: str
    rule: str
    summary: str
    scope: str | None  # None: public
    tag: str
    params: tuple[Param, ...] = ()
    body: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    description: str = ""
    validator: BodyValidator | None = field(default=None, repr=False)


REGISTRY: list[Operation] = []
_FORMATS = FormatChecker()


class BodyValidator:
    """Checks documents against one schema: a compiled validator (jsonschema-rs, microseconds)
    decides, and only a document it refuses goes through jsonschema for a readable first error.
    Where the two disagree (formats jsonschema does not check), the document passes here and
    the code or the database judges it."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.fast = jsonschema_rs.validator_for(schema, validate_formats=True)
        self.slow = Draft202012Validator(schema, format_checker=_FORMATS)

    def problem(self, document: Any, where: str = "") -> ApiError | None:
        if self.fast.is_valid(document):
            return None
        error = best_match(self.slow.iter_errors(document))
        return schema_error(error, where) if error is not None else None


def operation(
    bp: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    scope: str | None,
    params: tuple[Param, ...] = (),
    body: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    description: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a view with its contract; the view receives parsed query parameters as keywords."""
    op = Operation(
        method,
        rule,
        summary,
        scope,
        bp.name,
        params,
        body,
        response,
        status,
        errors,
        description,
        BodyValidator(body) if body is not None else None,
    )
    REGISTRY.append(op)

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**path_args: Any) -> Any:
            from flask import request

            g.operation = op
            auth.authorize(op.scope)
            for name, value in path_args.items():
                _check_path(name, value)
            if op.scope == "track" and len(request.args.get("key", "")) > 200:
                raise ApiError(400, "invalid_parameter", "key must be at most 200 characters", "key")
            unknown = (
                set(request.args) - {p.name for p in op.params} - ({"key"} if op.scope == "track" else set())
            )
            if unknown:
                raise ApiError(
                    400,
                    "unknown_parameter",
                    f"unknown query parameter {sorted(unknown)[0][:40]!r}; this endpoint takes "
                    f"{', '.join(p.name for p in op.params) or 'none'}",
                )
            query = {p.name: p.parse(request.args.get(p.name)) for p in op.params}
            return view(**path_args, **query)

        bp.add_url_rule(rule, view_func=wrapper, methods=[method])
        return wrapper

    return decorate


_ID = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,256}$")


def _check_path(name: str, value: str) -> None:
    if not _ID.match(value):
        raise ApiError(
            400, "invalid_parameter", f"{name} must be 1-256 characters without control characters", name
        )


def validate(op: Operation, document: Any, *, where: str = "") -> None:
    """Raise a 422 naming the first offending field when ``document`` breaks the operation's body schema."""
    assert op.validator is not None
    problem = op.validator.problem(document, where)
    if problem is not None:
        raise problem


def schema_error(error: ValidationError, where: str = "") -> ApiError:
    joined = where + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    path = joined.lstrip(".") or None
    if error.validator == "anyOf" and "productId" in str(error.schema):
        return ApiError(
            422,
            "missing_field",
            "productId (or itemId) is required",
            (path + ".productId") if path else "productId",
        )
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        name = missing[0] if missing else "a field"
        return ApiError(422, "missing_field", f"{name} is required", f"{path}.{name}" if path else name)
    if error.validator == "additionalProperties":
        return ApiError(422, "unknown_field", f"{error.message}; see /openapi.json for the fields", path)
    if error.validator == "maxItems" and not path:
        return ApiError(422, "batch_too_large", f"at most {schemas.MAX_BATCH} entries per request", path)
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    return ApiError(422, "invalid_field", f"{path or 'body'}: {message}", path)


def openapi(app: Flask, event_types: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every registered operation.

    Event types are data (a shop adds its own), so the document lists the ones the database knows
    at the time it is asked for; without them, any well-formed name is described.
    """
    paths: dict[str, dict[str, Any]] = {}
    for op in REGISTRY:
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", op.rule)
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{op.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', path.lower()).strip('_')}",
            "tags": [op.tag],
        }
        if op.description:
            entry["description"] = op.description
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": schemas.ID}
            for name in re.findall(r"\{([^}]+)\}", path)
        ]
        parameters += [
            {
                "name": p.name,
                "in": "query",
                "required": False,
                "description": p.description,
                "schema": p.schema(),
            }
            for p in op.params
        ]
        if op.scope == "track":
            parameters.append(
                {
                    "name": "key",
                    "in": "query",
                    "required": False,
                    "description": "Publishable (track) key, for navigator.sendBeacon, which cannot set headers",
                    "schema": {"type": "string", "maxLength": 200},
                }
            )
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            # Only JSON is described: the text/plain (sendBeacon) and NDJSON forms that tracking
            # endpoints also take carry the same documents, as their descriptions say.
            body_schema = op.body
            if event_types and op.body is schemas.EVENT:
                props = {**op.body["properties"], "eventType": {"type": "string", "enum": event_types}}
                body_schema = {**op.body, "properties": props}
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        responses: dict[str, Any] = {
            str(op.status): {
                "description": "OK",
                "content": {"application/json": {"schema": op.response or schemas.STATUS}},
            }
        }
        codes = set(op.errors) | {429, 500, 503}
        if op.scope is not None:
            codes |= {401, 403}
        if op.params or "{" in path:
            codes |= {400}
        if op.body is not None:
            codes |= {400, 413, 415, 422}
        for code in sorted(codes):
            responses[str(code)] = {
                "description": _REASONS.get(code, "Error"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        entry["responses"] = responses
        if op.scope is not None:
            entry["security"] = [{"bearer": []}]
            entry["x-recsql-scope"] = op.scope
        paths.setdefault(path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "recsql",
            "version": VERSION,
            "description": "Real-time recommendations maintained inside PostgreSQL. Errors are "
            "{error: {code, message, field}}. Keys have scopes track < read < admin.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": schemas.ERROR},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: rs_<scope>_..."}
            },
        },
    }


_REASONS = {
    400: "Malformed request (invalid JSON, bad parameter)",
    401: "Missing or unknown API key",
    403: "Key lacks the scope, or the origin is not allowed",
    404: "Unknown item or route",
    405: "Method not allowed",
    413: "Body larger than 2 MiB",
    415: "Unsupported content type",
    422: "Well-formed but invalid input",
    429: "Rate limit exceeded (see Retry-After)",
    500: "Unexpected server error",
    503: "Database unavailable",
}
