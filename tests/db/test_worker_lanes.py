"""The worker's two lanes against a real database: the fold lane's share of big refresh rounds."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from recsql import api, worker
from recsql.worker import Folder


def test_the_fold_lane_refreshes_its_share_of_big_rounds_under_steady_traffic(db_url, conn, monkeypatch):
    """Between its folds the fold lane refreshes half of a big refresh round beside the list lane
    (threshold lowered here), and every list still ends up current."""
    monkeypatch.setattr(worker, "SHARED_REFRESH_LISTS", 4)
    calls: list[tuple[str, int]] = []
    real_refresh = api.refresh_neighbors

    def refresh(c: Any, max_items: int | None = None, *, wait: bool = True) -> int:
        n: int = real_refresh(c, max_items, wait=wait)
        calls.append((threading.current_thread().name, n))
        return n

    helped: list[int] = []
    real_help = Folder._help_refresh

    def help_refresh(self: Folder, c: Any) -> None:
        start = len(calls)
        real_help(self, c)
        helped.extend(n for name, n in calls[start:] if name == threading.current_thread().name)

    monkeypatch.setattr(api, "refresh_neighbors", refresh)
    monkeypatch.setattr(Folder, "_help_refresh", help_refresh)
    folder = Folder(db_url, round_s=0.1)
    folder.start_thread()
    try:
        rng = random.Random(5)
        deadline = time.monotonic() + 10.0  # it stops at the first share; slow VMs need the room
        while time.monotonic() < deadline and not any(helped):
            with conn.transaction():
                for _ in range(20):
                    api.track(conn, f"u{rng.randrange(30)}", f"i{rng.randrange(200)}", "view")
            time.sleep(0.02)
    finally:
        folder.stop()
    assert any(helped), f"the fold lane never refreshed a share ({len(helped)} requests)"
    api.flush(conn)
    assert conn.execute("SELECT count(*) AS n FROM recsql.neighbor_dirty").fetchone()["n"] == 0


def _copy_views(conn: Any, users: int, n: int, first: int = 0) -> None:
    rows = [(f"u{i % users}", f"i{(i * 7) % 50}", "view") for i in range(first, first + n)]
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY recsql.events (user_id, item_id, event_type) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)


def test_the_list_lane_yields_to_writers_only_behind_a_growing_backlog(conn, monkeypatch):
    """The list lane leaves queued pairs alone while events keep arriving faster than they are folded
    (a backlog of BACKLOG_EVENTS or more that grew since it last looked), never for longer than
    backlog_refresh_s, and never when nothing is queued or no backlog waits."""
    monkeypatch.setattr(worker, "BACKLOG_EVENTS", 100)
    folder = Folder(None, backlog_refresh_s=60)
    assert not folder._yield_to_writers(
        folder._round_state(conn)
    )  # nothing queued, nothing pending, first look
    _copy_views(conn, 20, 300)
    api.fold(conn, defer_pairs=True)  # pairs queued, nothing pending
    state = folder._round_state(conn)
    assert (state["readable"], state["queued"], state["pending"]) == (True, 300, 0)
    _copy_views(conn, 20, 300, first=300)  # a backlog of 300 events
    assert not folder._yield_to_writers(
        folder._round_state(conn)
    )  # its first look: it cannot tell whether writers go on
    assert not folder._yield_to_writers(
        folder._round_state(conn)
    )  # no event since it last looked: the writers paused
    _copy_views(conn, 20, 300, first=600)
    assert folder._yield_to_writers(folder._round_state(conn))  # writing, behind, pairs young: leave them
    _copy_views(conn, 20, 300, first=900)
    conn.execute("UPDATE recsql.pair_queue SET queued_at = now() - interval '61 seconds'")
    assert not folder._yield_to_writers(
        folder._round_state(conn)
    )  # the queued pairs waited backlog_refresh_s
    conn.execute("UPDATE recsql.pair_queue SET queued_at = now()")
    _copy_views(conn, 20, 300, first=1200)
    monkeypatch.setattr(worker, "BACKLOG_EVENTS", 10_000)
    assert not folder._yield_to_writers(folder._round_state(conn))  # writing, but no backlog: steady traffic
    monkeypatch.setattr(worker, "BACKLOG_EVENTS", 100)
    conn.execute("DELETE FROM recsql.pair_queue")
    _copy_views(conn, 20, 300, first=1500)
    assert not folder._yield_to_writers(folder._round_state(conn))  # nothing queued to leave
