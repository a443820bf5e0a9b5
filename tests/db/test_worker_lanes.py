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
