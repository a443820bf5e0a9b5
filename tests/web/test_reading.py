"""Reading endpoints and catalog administration: bodies, logging of served lists, hiding, forgetting."""

from __future__ import annotations

from psycopg import sql

from recsql import api
from tests.db.helpers import assert_same_state, rebuilt_snapshot, snapshot
from tests.web.conftest import bearer


def _shop(conn):
    api.track(conn, "s0", "a", "view")  # registers the items before the catalog upsert below
    conn.execute(
        "INSERT INTO recsql.items (item_id, title, category, price) VALUES"
        " ('b', 'Boots', 'shoes', 80), ('c', 'Cap', 'hats', 15), ('d', 'Dress', 'clothes', 60)"
        " ON CONFLICT (item_id) DO NOTHING"
    )
    for user in ("s1", "s2", "s3"):
        for item in ("a", "b", "c"):
            api.track(conn, user, item, "view")
    api.track(conn, "s1", "d", "view")
    api.track(conn, "s1", "a", "purchase")
    api.track(conn, "s1", "b", "purchase")
    api.flush(conn)


def test_user_recommendations_carry_details_and_are_logged(client, api_keys, conn):
    _shop(conn)
    api.track(conn, "u1", "a", "view")
    response = client.get("/v1/users/u1/recommendations?k=2", headers=bearer(api_keys["read"]))
    assert response.status_code == 200
    body = response.get_json()
    assert [i["itemId"] for i in body["items"]] == ["b", "c"]
    assert body["items"][0] == {
        "itemId": "b",
        "score": body["items"][0]["score"],
        "reason": "similar to a",
        "together": None,
        "title": "Boots",
        "category": "shoes",
        "price": 80.0,
        "inStock": True,
    }
    logged = conn.execute(
        "SELECT surface, user_id, item_ids, scores FROM recsql.recommendation_log"
    ).fetchone()
    assert (logged["surface"], logged["user_id"], logged["item_ids"]) == ("user", "u1", ["b", "c"])


def test_filters_and_other_lists(client, api_keys, conn):
    _shop(conn)
    api.track(conn, "u1", "a", "view")
    read = bearer(api_keys["read"])
    hats = client.get("/v1/users/u1/recommendations?category=hats", headers=read).get_json()
    assert [i["itemId"] for i in hats["items"]] == ["c"]
    together = client.get("/v1/items/a/bought-together", headers=read).get_json()
    assert [i["itemId"] for i in together["items"]] == ["b"] and together["items"][0]["together"] == 1
    trending = client.get("/v1/trending?k=2", headers=read).get_json()
    assert len(trending["items"]) == 2 and trending["items"][0]["reason"] == "trending"
    session = client.post("/v1/sessions/recommendations", json={"itemIds": ["a"], "k": 2}, headers=read)
    assert [i["itemId"] for i in session.get_json()["items"]] == ["b", "c"]
    surfaces = [
        r["surface"] for r in conn.execute("SELECT surface FROM recsql.recommendation_log ORDER BY served_at")
    ]
    assert surfaces == ["user", "bought_together", "trending", "session"]


def test_unknown_item_is_404_and_not_logged(client, api_keys, conn):
    response = client.get("/v1/items/nope/similar", headers=bearer(api_keys["read"]))
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "item_not_found"
    assert conn.execute("SELECT count(*) AS n FROM recsql.recommendation_log").fetchone()["n"] == 0


def test_catalog_pages_and_items(client, api_keys, conn):
    _shop(conn)
    page = client.get("/v1/items?limit=2&offset=1", headers=bearer(api_keys["read"])).get_json()
    assert page["total"] == 4 and [i["itemId"] for i in page["items"]] == ["b", "c"]
    item = client.get("/v1/items/b", headers=bearer(api_keys["read"])).get_json()
    assert item["title"] == "Boots" and item["hidden"] is False


def test_put_creates_then_replaces_and_bulk_is_all_or_nothing(client, api_keys, conn):
    admin = bearer(api_keys["admin"])
    created = client.put(
        "/v1/items/x1", json={"title": "Lamp", "price": 12.5, "category": "home"}, headers=admin
    )
    assert created.status_code == 200 and created.get_json()["created"] is True
    replaced = client.put("/v1/items/x1", json={"title": "Lamp 2"}, headers=admin).get_json()
    assert replaced["created"] is False and replaced["item"]["price"] is None  # a PUT replaces
    bad = client.post("/v1/items", json=[{"itemId": "x2"}, {"itemId": "x3", "price": -1}], headers=admin)
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "[1].price"
    assert conn.execute("SELECT count(*) AS n FROM recsql.items WHERE item_id = 'x2'").fetchone()["n"] == 0
    ok = client.post(
        "/v1/items",
        json=[{"itemId": "x1"}, {"itemId": "x2", "title": "first"}, {"itemId": "x2", "title": "last"}],
        headers=admin,
    )
    assert ok.get_json() == {"created": 1, "updated": 1}  # a repeated id is written once, last wins
    assert conn.execute("SELECT title FROM recsql.items WHERE item_id = 'x2'").fetchone()["title"] == "last"


def test_hidden_item_leaves_every_list_until_put_again(client, api_keys, conn):
    _shop(conn)
    api.track(conn, "u1", "a", "view")
    read, admin = bearer(api_keys["read"]), bearer(api_keys["admin"])

    def everywhere():
        lists = [
            client.get("/v1/users/u1/recommendations?k=10", headers=read),
            client.get("/v1/items/a/similar", headers=read),
            client.get("/v1/items/a/bought-together", headers=read),
            client.get("/v1/trending?k=10", headers=read),
            client.post("/v1/sessions/recommendations", json={"itemIds": ["a"]}, headers=read),
        ]
        return [{i["itemId"] for i in r.get_json()["items"]} for r in lists]

    assert all("b" in ids for ids in everywhere())
    assert client.delete("/v1/items/b", headers=admin).get_json() == {"itemId": "b", "hidden": True}
    assert not any("b" in ids for ids in everywhere())
    assert "b" not in {i["itemId"] for i in client.get("/v1/items", headers=read).get_json()["items"]}
    client.put("/v1/items/b", json={"title": "Boots", "category": "shoes", "price": 80}, headers=admin)
    assert all("b" in ids for ids in everywhere())
    assert client.delete("/v1/items/zzz", headers=admin).status_code == 404


def test_forget_user_over_http_unlearns_them_and_their_anonymous_ids(client, api_keys, conn):
    _shop(conn)
    client.post(
        "/track-event",
        json={"eventType": "view", "productId": "c", "anonymousId": "anon-1"},
        headers=bearer(api_keys["track"]),
    )
    client.post(
        "/v1/identify", json={"userId": "s1", "anonymousId": "anon-1"}, headers=bearer(api_keys["track"])
    )
    client.get("/v1/users/s1/recommendations", headers=bearer(api_keys["read"]))
    response = client.delete("/v1/users/s1", headers=bearer(api_keys["admin"]))
    assert response.status_code == 200
    assert response.get_json() == {"userId": "s1", "eventsDeleted": 7}  # 6 as s1, 1 as anon-1
    for table in ("events", "user_item_events", "user_aliases", "recommendation_log"):
        query = sql.SQL("SELECT count(*) AS n FROM recsql.{} WHERE user_id IN ('s1', 'anon-1')")
        n = conn.execute(query.format(sql.Identifier(table))).fetchone()["n"]
        assert n == 0, table
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))  # equal to a rebuild from what is left


def test_read_endpoints_need_a_read_key(client, api_keys):
    response = client.get("/v1/trending", headers=bearer(api_keys["track"]))
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "insufficient_scope"
    response = client.delete("/v1/users/u1", headers=bearer(api_keys["read"]))
    assert response.status_code == 403
