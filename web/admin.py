"""Catalog and user administration: upsert and hide items, forget users."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify

from recsql import api, catalog
from web import body, pool, schemas
from web.reading import item_json
from web.spec import operation, validate

bp = Blueprint("admin", __name__)


def _item(item_id: str, doc: dict[str, Any]) -> catalog.Item:
    return catalog.Item(
        item_id=item_id,
        title=doc.get("title"),
        category=doc.get("category"),
        price=doc.get("price"),
        in_stock=doc.get("inStock", True),
        properties=doc.get("properties") or {},
    )


@operation(
    bp,
    "PUT",
    "/v1/items/<item_id>",
    summary="Create or replace an item (shows it again if it was hidden)",
    scope="admin",
    body=schemas.ITEM_BODY,
    response=schemas.ITEM_WRITTEN,
    description="Fields left out become empty (inStock: true); this is a replace, not a patch.",
)
def put_item(item_id: str) -> Response:
    doc = body.document()
    validate(g.operation, doc)
    conn = pool.conn()
    created = catalog.put_items(conn, [_item(item_id, doc)])[0]
    return jsonify(item=item_json(catalog.get_item(conn, item_id)), created=created)


@operation(
    bp,
    "POST",
    "/v1/items",
    summary="Create or replace many items at once",
    scope="admin",
    body=schemas.ITEMS_BULK,
    response=schemas.ITEMS_WRITTEN,
    description=f"Up to {schemas.MAX_BATCH} items, all or none: one invalid item rejects the request.",
)
def put_items() -> Response:
    doc = body.document()
    validate(g.operation, doc)
    created = catalog.put_items(pool.conn(), [_item(d["itemId"], d) for d in doc])
    n_created = sum(created)
    return jsonify(created=n_created, updated=len(created) - n_created)


@operation(
    bp,
    "DELETE",
    "/v1/items/<item_id>",
    summary="Hide an item from every recommendation (its history is kept)",
    scope="admin",
    response=schemas.HIDDEN,
    errors=(404,),
    description="PUT the item again to show it.",
)
def hide_item(item_id: str) -> Response:
    catalog.hide_item(pool.conn(), item_id)
    return jsonify(itemId=item_id, hidden=True)


@operation(
    bp,
    "DELETE",
    "/v1/users/<user_id>",
    summary="Forget a user: delete their events and unlearn them exactly",
    scope="admin",
    response=schemas.FORGOTTEN,
    description="Runs recsql.forget_user: the user's events, those of anonymous ids linked to them, and "
    "their every contribution to derived state are removed in one transaction.",
)
def forget_user(user_id: str) -> Response:
    n = api.forget_user(pool.conn(), user_id)
    return jsonify(userId=user_id, eventsDeleted=n)
