"""Reading recommendations and the catalog. Every list carries a recommendationId under which it is
logged; click and purchase events that send it back are attributed to it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, g, jsonify

from recsql import catalog, serving
from web import body, pool, schemas
from web.spec import CATEGORY, IN_STOCK, METHOD, K, Param, operation, validate

bp = Blueprint("reading", __name__)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, Decimal | int | float) else None


def _served(result: serving.ServedList) -> Response:
    items = [
        {
            "itemId": r["item_id"],
            "score": r["score"],
            "reason": r["reason"],
            "together": r["together"],
            "title": r["title"],
            "category": r["category"],
            "price": _number(r["price"]),
            "inStock": r["in_stock"],
        }
        for r in result.items
    ]
    return jsonify(recommendationId=result.recommendation_id, items=items)


def item_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "itemId": row["item_id"],
        "title": row["title"],
        "category": row["category"],
        "price": _number(row["price"]),
        "inStock": row["in_stock"],
        "properties": row["properties"],
        "hidden": row["hidden_at"] is not None,
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }


@operation(
    bp,
    "GET",
    "/v1/users/<user_id>/recommendations",
    summary="Personalised recommendations for a user",
    scope="read",
    params=(K, CATEGORY, IN_STOCK),
    response=schemas.RECOMMENDATIONS,
    description="From the user's recent history (including anonymous ids linked with /v1/identify); "
    "trending items for a user without history. Items the user bought are left out.",
)
def user_recommendations(user_id: str, k: int, category: str | None, in_stock: bool) -> Response:
    return _served(
        serving.serve(pool.conn(), "user", user_id=user_id, k=k, category=category, in_stock_only=in_stock)
    )


@operation(
    bp,
    "GET",
    "/v1/items/<item_id>/similar",
    summary="Items similar to an item (viewed together, and close in embedding space)",
    scope="read",
    params=(K, METHOD),
    response=schemas.RECOMMENDATIONS,
    errors=(404,),
)
def similar(item_id: str, k: int, method: str | None) -> Response:
    return _served(serving.serve(pool.conn(), "similar", item_id=item_id, k=k, method=method))


@operation(
    bp,
    "GET",
    "/v1/items/<item_id>/bought-together",
    summary="Items bought together with an item",
    scope="read",
    params=(K,),
    response=schemas.RECOMMENDATIONS,
    errors=(404,),
)
def bought_together(item_id: str, k: int) -> Response:
    return _served(serving.serve(pool.conn(), "bought_together", item_id=item_id, k=k))


@operation(
    bp,
    "GET",
    "/v1/trending",
    summary="Trending items (time-decayed popularity)",
    scope="read",
    params=(K, CATEGORY),
    response=schemas.RECOMMENDATIONS,
)
def trending(k: int, category: str | None) -> Response:
    return _served(serving.serve(pool.conn(), "trending", k=k, category=category))


@operation(
    bp,
    "POST",
    "/v1/sessions/recommendations",
    summary="Recommendations for a session's items (most recent last)",
    scope="read",
    body=schemas.SESSION_QUERY,
    response=schemas.RECOMMENDATIONS,
)
def session() -> Response:
    doc = body.document()
    validate(g.operation, doc)
    return _served(
        serving.serve(
            pool.conn(),
            "session",
            item_ids=doc["itemIds"],
            k=int(doc.get("k", 10)),  # JSON Schema counts 5.0 as an integer
            category=doc.get("category"),
            in_stock_only=doc.get("inStock", False),
        )
    )


@operation(
    bp,
    "GET",
    "/v1/items",
    summary="A page of the catalog (visible items, by id)",
    scope="read",
    params=(
        Param("limit", "integer", "Items per page", default=50, minimum=1, maximum=1000),
        Param("offset", "integer", "Items to skip", default=0, minimum=0, maximum=100_000_000),
        CATEGORY,
    ),
    response=schemas.ITEM_PAGE,
)
def list_items(limit: int, offset: int, category: str | None) -> Response:
    rows, total = catalog.list_items(pool.conn(), limit=limit, offset=offset, category=category)
    return jsonify(items=[item_json(r) for r in rows], total=total)


@operation(
    bp,
    "GET",
    "/v1/items/<item_id>",
    summary="One catalog item",
    scope="read",
    response=schemas.ITEM,
    errors=(404,),
)
def get_item(item_id: str) -> Response:
    return jsonify(item_json(catalog.get_item(pool.conn(), item_id)))
