"""A synthetic shop: a catalog and shoppers' sessions with real structure, the same for the same seed.

Structure worth recommending from: item popularity is Zipf-like; items belong to categories, and to
small same-brand series within a category; categories come in complementary pairs (laptops and
laptop accessories). A shopper prefers one or two categories; a session wanders from item to item
mostly within a series or category, follows the funnel view -> add_to_cart (rarely
remove_from_cart) -> purchase, often adds the complementary item, and sometimes rates or
wishlists. A few items are trending: their sessions happen in the last days.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import random
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import IO, Any, NamedTuple

SPAN = timedelta(days=30)
TREND_SPAN = timedelta(days=3)

EVENT_COLUMNS = ("user_id", "item_id", "event_type", "ts", "value", "event_id", "session_id")
ITEM_COLUMNS = ("item_id", "title", "category", "price", "in_stock")
EVENT_TYPES = ("view", "add_to_cart", "remove_from_cart", "purchase", "rating", "wishlist")
_VIEW, _ADD, _REMOVE, _PURCHASE, _RATING, _WISHLIST = range(6)

# Complementary pairs sit next to each other: category 2k complements 2k + 1.
_CATEGORIES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("laptops", 900, ("Laptop", "Ultrabook", "Notebook")),
    ("laptop accessories", 35, ("Laptop Sleeve", "USB-C Hub", "Laptop Stand")),
    ("cameras", 650, ("Mirrorless Camera", "Action Camera", "Compact Camera")),
    ("camera gear", 60, ("Camera Lens", "Tripod", "Memory Card")),
    ("coffee makers", 180, ("Espresso Machine", "Coffee Grinder", "Pour-Over Kettle")),
    ("coffee", 14, ("Coffee Beans", "Ground Coffee", "Coffee Filters")),
    ("running shoes", 120, ("Running Shoe", "Trail Shoe", "Racing Flat")),
    ("running apparel", 40, ("Running Socks", "Running Shorts", "Running Jacket")),
    ("tents", 250, ("Tent", "Shelter", "Bivy")),
    ("sleeping gear", 90, ("Sleeping Bag", "Sleeping Pad", "Camp Pillow")),
    ("bikes", 800, ("Road Bike", "Gravel Bike", "City Bike")),
    ("bike accessories", 45, ("Bike Helmet", "Bike Light", "Bike Lock")),
    ("phones", 600, ("Smartphone", "Flip Phone", "Rugged Phone")),
    ("phone accessories", 20, ("Phone Case", "Screen Protector", "Charger")),
    ("cookware", 70, ("Frying Pan", "Saucepan", "Dutch Oven")),
    ("kitchen tools", 25, ("Spatula", "Chef Knife", "Cutting Board")),
    ("tea", 9, ("Green Tea", "Black Tea", "Herbal Tea")),
    ("teaware", 30, ("Teapot", "Tea Cup", "Tea Infuser")),
    ("printers", 220, ("Printer", "Photo Printer", "Scanner")),
    ("printer supplies", 30, ("Ink Cartridge", "Toner", "Photo Paper")),
    ("headphones", 150, ("Headphones", "Earbuds", "Headset")),
    ("audio accessories", 25, ("Headphone Case", "Audio Cable", "Ear Tips")),
    ("garden tools", 40, ("Pruner", "Garden Hose", "Trowel")),
    ("plants", 18, ("Seed Pack", "Houseplant", "Planter")),
    ("strollers", 400, ("Stroller", "Car Seat", "Baby Carrier")),
    ("baby care", 15, ("Diapers", "Baby Wipes", "Baby Bottle")),
    ("board games", 35, ("Board Game", "Strategy Game", "Party Game")),
    ("game accessories", 12, ("Card Sleeves", "Dice Set", "Game Organizer")),
    ("yoga", 30, ("Yoga Mat", "Yoga Block", "Yoga Strap")),
    ("fitness", 45, ("Dumbbell", "Kettlebell", "Resistance Band")),
)
_ADJECTIVES = (
    "Compact",
    "Classic",
    "Pro",
    "Ultra",
    "Eco",
    "Premium",
    "Lite",
    "Smart",
    "Vintage",
    "Sport",
    "Urban",
    "Deluxe",
    "Travel",
    "Mini",
    "Max",
    "Essential",
)
_BRANDS = (
    "Aurora",
    "Bolt",
    "Cedar",
    "Drift",
    "Ember",
    "Fjord",
    "Granite",
    "Halo",
    "Iris",
    "Juniper",
    "Kestrel",
    "Lumen",
    "Mosaic",
    "Nova",
    "Orbit",
    "Pioneer",
    "Quartz",
    "Ridge",
    "Summit",
    "Tundra",
    "Umbra",
    "Vertex",
    "Willow",
    "Xenon",
    "Yonder",
    "Zephyr",
)

SERIES_SIZE = 8  # items per same-brand series within a category
TREND_SHARE = 0.08  # share of sessions that are about a trending item, all in the last TREND_SPAN


class Event(NamedTuple):
    """One generated event, in the column order of `recsql import events`."""

    user_id: str
    item_id: str
    event_type: str
    ts: datetime
    value: float | None
    event_id: str
    session_id: str


@dataclass
class _Shop:
    """The catalog's hidden structure, used to draw plausible sessions."""

    items: list[dict[str, Any]]
    category_of: list[int]
    series_of: list[int]
    complement_series: list[int]  # per series
    by_category: list[tuple[list[int], list[float]]]  # item indexes, cumulative weights
    by_series: list[tuple[list[int], list[float]]]
    everything: tuple[list[int], list[float]]
    category_cum: list[float]
    trending: list[int]


def _width(n: int) -> int:
    return max(4, len(str(max(n - 1, 0))))


def item_id(index: int, n_items: int) -> str:
    """The id of item ``index`` in a catalog of ``n_items``."""
    return f"sku-{index:0{_width(n_items)}d}"


def user_id(index: int, n_users: int) -> str:
    """The id of user ``index`` among ``n_users``."""
    return f"u{index:0{_width(n_users)}d}"


def _pool(members: list[int], weights: Sequence[float]) -> tuple[list[int], list[float]]:
    return members, list(accumulate(weights[m] for m in members))


def _draw(pool: tuple[list[int], list[float]], rng: random.Random) -> int:
    members, cum = pool
    return members[bisect.bisect_right(cum, rng.random() * cum[-1], 0, len(cum) - 1)]


def _n_categories(n_items: int) -> int:
    return max(2, min(len(_CATEGORIES), n_items // 10)) // 2 * 2


def _build_shop(n_items: int, seed: int) -> _Shop:
    if n_items < 2:
        raise ValueError(f"a shop needs at least 2 items, got {n_items}")
    rng = random.Random(f"catalog-{seed}")
    n_cat = _n_categories(n_items)
    size_weights = [0.5 + rng.random() for _ in range(n_cat)]
    size_cum = list(accumulate(size_weights))
    category_of = [
        i if i < n_cat else bisect.bisect_right(size_cum, rng.random() * size_cum[-1], 0, n_cat - 1)
        for i in range(n_items)
    ]
    ranks = list(range(n_items))
    rng.shuffle(ranks)
    weight = [1.0 / (r + 1) for r in ranks]  # Zipf with exponent 1

    members: list[list[int]] = [[] for _ in range(n_cat)]
    for i, c in enumerate(category_of):
        members[c].append(i)
    series_of = [0] * n_items
    series_members: list[list[int]] = []
    first_series: list[int] = []
    for c in range(n_cat):
        first_series.append(len(series_members))
        shuffled = members[c][:]
        rng.shuffle(shuffled)
        n_series = max(1, round(len(shuffled) / SERIES_SIZE))
        for s in range(n_series):
            group = sorted(shuffled[s::n_series])
            for i in group:
                series_of[i] = len(series_members)
            series_members.append(group)
    n_series_of = [
        (first_series[c + 1] if c + 1 < n_cat else len(series_members)) - first_series[c]
        for c in range(n_cat)
    ]
    complement_series = []
    for s, group in enumerate(series_members):
        c = category_of[group[0]]
        other = c ^ 1
        complement_series.append(first_series[other] + (s - first_series[c]) % n_series_of[other])

    brand = [_BRANDS[rng.randrange(len(_BRANDS))] for _ in series_members]
    items = []
    for i in range(n_items):
        name, base_price, nouns = _CATEGORIES[category_of[i]]
        title = (
            f"{brand[series_of[i]]} {_ADJECTIVES[rng.randrange(len(_ADJECTIVES))]} {nouns[rng.randrange(3)]}"
        )
        price = max(1.0, round(base_price * math.exp(rng.gauss(0, 0.35)))) - 0.01
        items.append(
            {
                "item_id": item_id(i, n_items),
                "title": title,
                "category": name,
                "price": round(price, 2),
                "in_stock": rng.random() >= 0.03,
            }
        )

    # Trending items come from the middle of the popularity ranking, so trending differs from all-time.
    middle = [i for i in range(n_items) if n_items * 0.05 <= ranks[i] < n_items * 0.5]
    trending = sorted(rng.sample(middle, min(len(middle), max(3, n_items // 100))))
    category_weight = [sum(weight[i] for i in members[c]) for c in range(n_cat)]
    return _Shop(
        items=items,
        category_of=category_of,
        series_of=series_of,
        complement_series=complement_series,
        by_category=[_pool(m, weight) for m in members],
        by_series=[_pool(m, weight) for m in series_members],
        everything=_pool(list(range(n_items)), weight),
        category_cum=list(accumulate(category_weight)),
        trending=trending,
    )


def catalog(n_items: int, seed: int = 0) -> list[dict[str, Any]]:
    """Return the shop's items: item_id, title, category, price and in_stock."""
    return _build_shop(n_items, seed).items


class _Sessions:
    """Sessions in compact arrays: per session its user, trend flag and first event; per event its parts."""

    def __init__(self) -> None:
        self.user = array("i")
        self.trend = array("b")
        self.first = array("q", [0])
        self.item = array("i")
        self.kind = array("b")
        self.offset = array("i")  # seconds since the session started
        self.value = array("b")  # rating, 0 for none

    def add(self, item: int, kind: int, offset: int, value: int = 0) -> None:
        self.item.append(item)
        self.kind.append(kind)
        self.offset.append(offset)
        self.value.append(value)

    @property
    def n_events(self) -> int:
        return len(self.item)


def _session(shop: _Shop, prefs: tuple[int, ...], out: _Sessions, rng: random.Random, trend: bool) -> None:
    r = rng.random
    if trend:
        cur = shop.trending[int(r() * len(shop.trending))]
    else:
        if r() < 0.8:
            c = prefs[int(r() * len(prefs))]
        else:
            cum = shop.category_cum
            c = bisect.bisect_right(cum, r() * cum[-1], 0, len(cum) - 1)
        cur = _draw(shop.by_category[c], rng)
    n_views = 1 + min(29, int(math.log(1.0 - r()) / math.log(0.78)))
    t = 0
    cart: list[int] = []
    for v in range(n_views):
        if v:
            x = r()
            if x < 0.5:
                cur = _draw(shop.by_series[shop.series_of[cur]], rng)
            elif x < 0.85:
                cur = _draw(shop.by_category[shop.category_of[cur]], rng)
            elif x < 0.93:
                cur = _draw(shop.by_series[shop.complement_series[shop.series_of[cur]]], rng)
            else:
                cur = _draw(shop.everything, rng)
        t += 10 + int(r() * 110)
        out.add(cur, _VIEW, t)
        if r() < 0.02:
            t += 2 + int(r() * 10)
            out.add(cur, _WISHLIST, t)
        if r() < 0.12 and cur not in cart:
            t += 5 + int(r() * 40)
            out.add(cur, _ADD, t)
            cart.append(cur)
            if r() < 0.4:
                extra = _draw(shop.by_series[shop.complement_series[shop.series_of[cur]]], rng)
                t += 10 + int(r() * 60)
                out.add(extra, _VIEW, t)
                if r() < 0.6 and extra not in cart:
                    t += 5 + int(r() * 30)
                    out.add(extra, _ADD, t)
                    cart.append(extra)
    for item in cart[:]:
        if r() < 0.1:
            t += 5 + int(r() * 30)
            out.add(item, _REMOVE, t)
            cart.remove(item)
    if cart and r() < 0.55:
        t += 30 + int(r() * 120)
        for item in cart:
            t += 1
            out.add(item, _PURCHASE, t)
        for item in cart:
            if r() < 0.15:
                x = r()
                stars = 1 if x < 0.05 else 2 if x < 0.1 else 3 if x < 0.25 else 4 if x < 0.6 else 5
                t += 60 + int(r() * 600)
                out.add(item, _RATING, t, stars)


def events(
    n_users: int,
    n_items: int,
    *,
    n_events: int | None = None,
    n_sessions: int | None = None,
    seed: int = 0,
    end: datetime | None = None,
) -> Iterator[Event]:
    """Yield the shop's events, sessions in start order, each session's events in time order.

    Give ``n_events`` (the stream stops after exactly that many) or ``n_sessions``. Timestamps
    lie in the 30 days before ``end`` (default: the start of the current hour, UTC), never after it.
    Event ids are deterministic for the arguments, so loading the same stream twice stores it once.
    """
    if (n_events is None) == (n_sessions is None):
        raise ValueError("give exactly one of n_events and n_sessions")
    if n_users < 1:
        raise ValueError(f"need at least 1 user, got {n_users}")
    if end is None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    if end.tzinfo is None:
        raise ValueError("end must be timezone-aware")
    shop = _build_shop(n_items, seed)
    rng = random.Random(f"events-{seed}-{n_users}")
    n_cat = len(shop.category_cum)

    ranks = list(range(n_users))
    rng.shuffle(ranks)
    user_cum = list(accumulate(1.0 / math.sqrt(r + 1) for r in ranks))
    cum = shop.category_cum
    prefs = []
    for _ in range(n_users):
        first = bisect.bisect_right(cum, rng.random() * cum[-1], 0, n_cat - 1)
        prefs.append(
            (first, first ^ 1 if rng.random() < 0.3 else rng.randrange(n_cat))
            if rng.random() < 0.4
            else (first,)
        )

    out = _Sessions()
    limit_events = n_events if n_events is not None else math.inf
    limit_sessions = n_sessions if n_sessions is not None else math.inf
    while out.n_events < limit_events and len(out.user) < limit_sessions:
        u = bisect.bisect_right(user_cum, rng.random() * user_cum[-1], 0, n_users - 1)
        trend = rng.random() < TREND_SHARE
        _session(shop, prefs[u], out, rng, trend)
        out.user.append(u)
        out.trend.append(trend)
        out.first.append(out.n_events)
    total = n_events if n_events is not None else out.n_events

    # Start times: trending sessions in the last few days, the others anywhere in the span.
    span_s = SPAN.total_seconds()
    trend_s = TREND_SPAN.total_seconds()
    starts = []
    for s in range(len(out.user)):
        duration = out.offset[out.first[s + 1] - 1] + 60
        window = trend_s if out.trend[s] else span_s
        starts.append(-duration - rng.random() * max(window - duration, 0.0))
    order = sorted(range(len(starts)), key=starts.__getitem__)

    prefix = f"syn{seed}-{n_users}-{n_items}-{n_events if n_events is not None else 's' + str(n_sessions)}-"
    items = [it["item_id"] for it in shop.items]
    users = [user_id(i, n_users) for i in range(n_users)]
    n = 0
    for s in order:
        session_id = f"{prefix}s{s}"
        user = users[out.user[s]]
        start = end + timedelta(seconds=round(starts[s], 3))
        for e in range(out.first[s], out.first[s + 1]):
            if n >= total:
                return
            value = out.value[e]
            yield Event(
                user,
                items[out.item[e]],
                EVENT_TYPES[out.kind[e]],
                start + timedelta(seconds=out.offset[e]),
                float(value) if value else None,
                f"{prefix}{n}",
                session_id,
            )
            n += 1


def _open(target: str | Path | IO[str]) -> tuple[IO[str], bool]:
    if isinstance(target, str | Path):
        return open(target, "w", newline="", encoding="utf-8"), True
    return target, False


def write_csv(target: str | Path | IO[str], rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> int:
    """Write rows as CSV with a header (empty cell for None, ISO 8601 times); return the row count."""
    out, owned = _open(target)
    try:
        writer = csv.writer(out)
        writer.writerow(columns)
        n = 0
        for row in rows:
            writer.writerow(
                ["" if v is None else v.isoformat() if isinstance(v, datetime) else v for v in row]
            )
            n += 1
        return n
    finally:
        if owned:
            out.close()


def write_ndjson(target: str | Path | IO[str], rows: Iterable[Sequence[Any]], columns: Sequence[str]) -> int:
    """Write rows as one JSON object per line (None fields left out); return the row count."""
    out, owned = _open(target)
    try:
        n = 0
        for row in rows:
            record = {
                c: v.isoformat() if isinstance(v, datetime) else v
                for c, v in zip(columns, row, strict=True)
                if v is not None
            }
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            n += 1
        return n
    finally:
        if owned:
            out.close()


def item_rows(items: Iterable[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
    """Catalog dicts as tuples in ITEM_COLUMNS order, for the writers."""
    for it in items:
        yield tuple(it[c] for c in ITEM_COLUMNS)


def main(argv: list[str] | None = None) -> None:
    """Write a synthetic shop as files for `recsql import items` and `recsql import events`."""
    parser = argparse.ArgumentParser(prog="python -m recsql.synth", description=main.__doc__)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", choices=["csv", "ndjson"], default="csv")
    parser.add_argument("--out", type=Path, default=Path("."), help="Directory for items.* and events.*")
    args = parser.parse_args(argv)
    write = write_csv if args.format == "csv" else write_ndjson
    args.out.mkdir(parents=True, exist_ok=True)
    n_items = write(
        args.out / f"items.{args.format}", item_rows(catalog(args.items, args.seed)), ITEM_COLUMNS
    )
    n_events = write(
        args.out / f"events.{args.format}",
        events(args.users, args.items, n_events=args.events, seed=args.seed),
        EVENT_COLUMNS,
    )
    print(f"wrote {n_items:,} items and {n_events:,} events to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
