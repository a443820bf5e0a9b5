"""JSON Schemas (2020-12, as OpenAPI 3.1 uses) of every request and response body.

They are the single description of the wire format: requests are validated against them and
/openapi.json is built from them, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

MAX_BATCH = 1000
MAX_BODY_BYTES = 2 * 1024 * 1024

# Same rule as the database's CHECK constraints: 1-256 characters, no control characters.
ID: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$",
}
# PostgreSQL text and jsonb cannot hold U+0000.
NO_NUL = "^[^\\u0000]*$"
OPTIONAL_TEXT: Schema = {"type": ["string", "null"], "maxLength": 1000, "pattern": NO_NUL}
EVENT_TYPE: Schema = {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,62}$", "examples": ["view", "purchase"]}
TIMESTAMP: Schema = {
    "description": "When it happened: ISO 8601 (UTC if no offset) or milliseconds since the Unix epoch",
    "oneOf": [
        {"type": "string", "format": "date-time", "maxLength": 64},
        {"type": "integer", "minimum": 0, "maximum": 253402300799999},
    ],
}
UUID: Schema = {"type": "string", "format": "uuid"}
PROPERTIES_DEPTH = 4


def _json_value(depth: int) -> Schema:
    """Any JSON value nested at most ``depth`` deep, with no U+0000 in any string or key."""
    scalars: list[Schema] = [{"type": ["number", "boolean", "null"]}, {"type": "string", "pattern": NO_NUL}]
    if depth == 0:
        return {"anyOf": scalars}
    inner = _json_value(depth - 1)
    return {
        "anyOf": [
            *scalars,
            {"type": "array", "items": inner},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": inner},
        ]
    }


# Free-form attributes: any JSON object up to PROPERTIES_DEPTH levels (spelled out, no $ref, so the
# same schema works standalone and inside /openapi.json).
PROPERTIES: Schema = {
    "type": "object",
    "maxProperties": 100,
    "propertyNames": {"pattern": NO_NUL},
    "additionalProperties": _json_value(PROPERTIES_DEPTH - 1),
}
NUMBER: Schema = {"type": "number", "minimum": -1e12, "maximum": 1e12}

EVENT: Schema = {
    "type": "object",
    "description": "One thing a user did with a product. productId and itemId are synonyms.",
    "properties": {
        "eventType": EVENT_TYPE,
        "productId": ID,
        "itemId": ID,
        "userId": ID,
        "anonymousId": ID,
        "eventId": {**ID, "description": "Idempotency key: the same id sent twice counts once"},
        "timestamp": TIMESTAMP,
        "value": NUMBER,
        "sessionId": {"type": "string", "maxLength": 256, "pattern": NO_NUL},
        "recommendationId": {**UUID, "description": "The served list this event responds to (attribution)"},
        "properties": PROPERTIES,
        "key": {"type": "string", "maxLength": 200, "description": "Publishable key (for sendBeacon)"},
    },
    "required": ["eventType"],
    "anyOf": [{"required": ["productId"]}, {"required": ["itemId"]}],
    "additionalProperties": False,
}

EVENT_BATCH: Schema = {
    "oneOf": [
        {"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH},
        {
            "type": "object",
            "properties": {
                "events": {"type": "array", "items": {"type": "object"}, "maxItems": MAX_BATCH},
                "key": {"type": "string", "maxLength": 200},
            },
            "required": ["events"],
            "additionalProperties": False,
        },
    ],
    "description": f"Up to {MAX_BATCH} events (each as in /track-event); each is checked on its own",
}

IDENTIFY: Schema = {
    "type": "object",
    "properties": {
        "userId": ID,
        "anonymousId": {
            **ID,
            "description": "The visitor's anonymous id (X-Anonymous-Id, recsql_aid cookie)",
        },
        "key": {"type": "string", "maxLength": 200},
    },
    "required": ["userId", "anonymousId"],
    "additionalProperties": False,
}

SESSION_QUERY: Schema = {
    "type": "object",
    "properties": {
        "itemIds": {"type": "array", "items": ID, "minItems": 0, "maxItems": 200},
        "k": {"type": "integer", "minimum": 1, "maximum": 1000},
        "category": {"type": "string", "maxLength": 256, "pattern": NO_NUL},
        "inStock": {"type": "boolean"},
    },
    "required": ["itemIds"],
    "additionalProperties": False,
}

ITEM_FIELDS: dict[str, Schema] = {
    "title": OPTIONAL_TEXT,
    "category": {"type": ["string", "null"], "maxLength": 256, "pattern": NO_NUL},
    "price": {"type": ["number", "null"], "minimum": 0, "maximum": 999999999999},
    "inStock": {"type": "boolean"},
    "properties": PROPERTIES,
}

ITEM_BODY: Schema = {"type": "object", "properties": ITEM_FIELDS, "additionalProperties": False}

ITEMS_BULK: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_BATCH,
    "items": {
        "type": "object",
        "properties": {"itemId": ID, **ITEM_FIELDS},
        "required": ["itemId"],
        "additionalProperties": False,
    },
}

# Responses.

ERROR: Schema = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}

TRACKED: Schema = {
    "type": "object",
    "properties": {
        "status": {"enum": ["accepted", "duplicate"]},
        "eventId": {"type": "string"},
        "userId": {"type": "string"},
    },
    "required": ["status", "eventId", "userId"],
}

BATCH_RESULT: Schema = {
    "type": "object",
    "properties": {
        "accepted": {"type": "integer"},
        "duplicates": {"type": "integer"},
        "rejected": {"type": "integer"},
        "results": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "status": {"enum": ["accepted", "duplicate", "rejected"]},
                    "eventId": {"type": ["string", "null"]},
                    "error": ERROR["properties"]["error"],
                },
                "required": ["index", "status"],
            },
        },
    },
    "required": ["accepted", "duplicates", "rejected", "results"],
}

IDENTIFIED: Schema = {
    "type": "object",
    "properties": {"userId": {"type": "string"}, "anonymousId": {"type": "string"}},
    "required": ["userId", "anonymousId"],
}

ITEM: Schema = {
    "type": "object",
    "properties": {
        "itemId": {"type": "string"},
        "title": {"type": ["string", "null"]},
        "category": {"type": ["string", "null"]},
        "price": {"type": ["number", "null"]},
        "inStock": {"type": "boolean"},
        "properties": {"type": "object"},
        "hidden": {"type": "boolean"},
        "createdAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
    "required": ["itemId", "title", "category", "price", "inStock"],
}

ITEM_PAGE: Schema = {
    "type": "object",
    "properties": {"items": {"type": "array", "items": ITEM}, "total": {"type": "integer"}},
    "required": ["items", "total"],
}

ITEM_WRITTEN: Schema = {
    "type": "object",
    "properties": {"item": ITEM, "created": {"type": "boolean"}},
    "required": ["item", "created"],
}

ITEMS_WRITTEN: Schema = {
    "type": "object",
    "properties": {"created": {"type": "integer"}, "updated": {"type": "integer"}},
    "required": ["created", "updated"],
}

HIDDEN: Schema = {
    "type": "object",
    "properties": {"itemId": {"type": "string"}, "hidden": {"const": True}},
    "required": ["itemId", "hidden"],
}

FORGOTTEN: Schema = {
    "type": "object",
    "properties": {"userId": {"type": "string"}, "eventsDeleted": {"type": "integer"}},
    "required": ["userId", "eventsDeleted"],
}

RECOMMENDATIONS: Schema = {
    "type": "object",
    "properties": {
        "recommendationId": {**UUID, "description": "Send it with click/purchase events for attribution"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "itemId": {"type": "string"},
                    "score": {"type": "number"},
                    "reason": {"type": ["string", "null"]},
                    "together": {"type": ["integer", "null"], "description": "Users who had both items"},
                    "title": {"type": ["string", "null"]},
                    "category": {"type": ["string", "null"]},
                    "price": {"type": ["number", "null"]},
                    "inStock": {"type": ["boolean", "null"]},
                },
                "required": ["itemId", "score"],
            },
        },
    },
    "required": ["recommendationId", "items"],
}

STATUS: Schema = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
