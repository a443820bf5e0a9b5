"""The demo shop at /demo/, clicked through in a real browser: what it tracks and what that changes."""

from __future__ import annotations

from recsql import api
from tests.e2e.helpers import events_of

SPORT = {"ball", "pump", "boots", "socks"}


def test_shopping_trip_is_tracked_and_changes_recommendations(shop, serve, tab):
    server = serve(DEMO=True, OPEN_ACCESS=True)
    page = tab.page
    page.goto(f"{server.url}/demo/")
    page.wait_for_selector('#product-list li[data-item-id="lamp"]')
    aid = page.evaluate("recsql.anonymousId()")
    before = [r["item_id"] for r in api.recommend(shop, aid, 3)]
    page.click('#product-list li[data-item-id="lamp"] a')
    page.wait_for_selector('#item[data-item-id="lamp"]')
    # Lists computed from other shoppers' history.
    page.wait_for_selector('#similar li[data-item-id="bulb"]')
    page.wait_for_selector('#bought-together li[data-item-id="bulb"]')

    page.click("#add-to-cart")
    page.wait_for_function("document.getElementById('cart-count').textContent === '1'")
    page.click("#cart-link")
    page.wait_for_selector('#cart-lines li[data-item-id="lamp"]')
    page.click("#checkout")
    page.wait_for_selector('#order-done[data-items="lamp"]')
    assert page.evaluate("recsql.flush()") is True

    rows = events_of(shop, aid)
    assert [(r["event_type"], r["item_id"]) for r in rows] == [
        ("view", "lamp"),
        ("add_to_cart", "lamp"),
        ("purchase", "lamp"),
    ]
    assert rows[-1]["value"] == 30  # the price times the quantity
    assert len({r["event_id"] for r in rows}) == 3 and len({r["session_id"] for r in rows}) == 1

    api.flush(shop)
    after = [r["item_id"] for r in api.recommend(shop, aid, 3)]
    assert set(before) <= SPORT  # a newcomer gets what is popular
    assert set(after[:2]) == {"bulb", "shade"}  # now: what goes with the lamp
    assert "lamp" not in after  # bought already

    # The panel catches up by itself, and a click on it is attributed to the list it came from.
    page.wait_for_selector('#panel-recommended li[data-item-id="shade"]', timeout=8_000)
    list_id = page.evaluate(
        """() => {
          const ol = document.querySelector('#panel-recommended ol');
          const id = ol.dataset.recommendationId;
          ol.querySelector('li[data-item-id="shade"] a').click();
          return id;
        }"""
    )
    page.wait_for_selector('#item[data-item-id="shade"]')
    assert page.evaluate("recsql.flush()") is True
    click, view = events_of(shop, aid)[3:]
    assert (click["event_type"], click["item_id"], str(click["recommendation_id"])) == (
        "click",
        "shade",
        list_id,
    )
    assert (view["event_type"], view["item_id"], view["recommendation_id"]) == ("view", "shade", None)
    served = shop.execute(
        "SELECT surface, user_id, item_ids FROM recsql.recommendation_log WHERE recommendation_id = %s",
        (list_id,),
    ).fetchone()
    assert served["surface"] == "user" and served["user_id"] == aid and "shade" in served["item_ids"]
    assert tab.page_errors() == []


def test_sign_in_links_the_anonymous_history(shop, serve, tab):
    server = serve(DEMO=True, OPEN_ACCESS=True)
    page = tab.page
    page.goto(f"{server.url}/demo/#/item/lamp")
    page.wait_for_selector('#item[data-item-id="lamp"]')
    aid = page.evaluate("recsql.anonymousId()")

    page.fill("#signin-user", "alice")
    page.click("#signin-button")
    page.wait_for_selector('#whoami[data-user-id="alice"]')
    page.click('#similar li[data-item-id="bulb"] a')
    page.wait_for_selector('#item[data-item-id="bulb"]')
    assert page.evaluate("recsql.flush()") is True

    assert [(r["event_type"], r["item_id"]) for r in events_of(shop, aid)] == [("view", "lamp")]
    assert [(r["event_type"], r["item_id"]) for r in events_of(shop, "alice")] == [
        ("click", "bulb"),
        ("view", "bulb"),
    ]
    api.flush(shop)
    # The lamp viewed before signing in counts for alice's recommendations.
    assert {r["source_item_id"] for r in api.explain(shop, "alice", "shade")} == {"lamp", "bulb"}
    assert "shade" in [r["item_id"] for r in api.recommend(shop, "alice", 3)]
    assert tab.page_errors() == []
