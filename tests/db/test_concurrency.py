"""16 writers at once, with a hot item and overlapping users, while the folder runs."""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from recsql import api
from recsql.worker import Folder
from tests.db.helpers import assert_same_state, rebuilt_snapshot, snapshot

WRITERS = 16
TXNS_PER_WRITER = 25
TYPES = ["view", "view", "view", "add_to_cart", "purchase", "remove_from_cart"]


def writer(url: str, seed: int, sent: list[int], errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    try:
        with psycopg.connect(url) as conn:
            for t in range(TXNS_PER_WRITER):
                size = 1 if t % 2 == 0 else rng.randint(2, 8)
                with conn.transaction():
                    for i in range(size):
                        # A hot item takes ~40% of traffic; users overlap across writers.
                        item = "hot" if rng.random() < 0.4 else f"i{rng.randint(0, 30)}"
                        user = f"u{rng.randint(0, 20)}"
                        event_type = rng.choice(TYPES)
                        if i % 3 == 2:
                            conn.execute(
                                "INSERT INTO recsql.events (user_id, item_id, event_type) VALUES (%s, %s, %s)",
                                (user, item, event_type),
                            )
                        else:
                            conn.execute("SELECT * FROM recsql.track(%s, %s, %s)", (user, item, event_type))
                sent.append(size)
    except BaseException as exc:  # collected and asserted on in the main thread
        errors.append(exc)


def test_sixteen_writers_no_deadlock_no_lost_update(db_url, conn):
    folder = Folder(db_url, idle_s=0.01)
    folder.start_thread()
    sent: list[int] = []
    errors: list[BaseException] = []
    threads = [threading.Thread(target=writer, args=(db_url, seed, sent, errors)) for seed in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    folder.stop()

    assert errors == []
    assert len(sent) == WRITERS * TXNS_PER_WRITER
    total = sum(sent)
    conn.execute("SELECT recsql.flush()")
    stored = conn.execute("SELECT count(*) AS n FROM recsql.events").fetchone()["n"]
    assert stored == total
    folded = conn.execute("SELECT sum(n_events) AS n FROM recsql.item_stats").fetchone()["n"]
    assert folded == total
    hot = conn.execute(
        "SELECT s.n_events, (SELECT count(*) FROM recsql.events WHERE item_id = 'hot') AS logged"
        " FROM recsql.item_stats s JOIN recsql.items i USING (item_key) WHERE i.item_id = 'hot'"
    ).fetchone()
    assert hot["n_events"] == hot["logged"] > total * 0.3
    assert folder.folded > 0
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))


def test_a_lane_that_fails_stops_the_folder(db_url, monkeypatch):
    """An unexpected error in the list lane stops the fold lane too and surfaces from run(),
    instead of leaving pairs to queue up behind a dead thread."""

    def broken(conn, *args, **kwargs):
        raise ValueError("boom")

    # Something every list-lane poll does and the fold lane never does (an idle list lane adds no
    # pairs: it finds none queued first).
    monkeypatch.setattr(Folder, "_events_pending", staticmethod(broken))
    folder = Folder(db_url, idle_s=0.01)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="list lane failed") as info:
        folder.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert time.monotonic() - started < 10


def test_two_lanes_work_off_a_backlog_in_slices(db_url, conn):
    """A backlog (a bulk COPY) is folded in slices of at most fold_slice events, oldest first; the
    lanes end with every event folded, every pair added (part by part) and every list refreshed, in
    rounds that grow once caught up, and the derived state equals a rebuild's."""
    api.maintain(conn)  # else the folder's first round would, and its flush() fold the backlog at once
    rng = random.Random(7)
    rows = [
        (f"u{rng.randint(0, 60)}", f"i{int(200 * rng.random() ** 2)}", rng.choice(TYPES)) for _ in range(2000)
    ]
    with conn.cursor().copy("COPY recsql.events (user_id, item_id, event_type) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    slices: list[int] = []
    rounds: list[int] = []
    folder = Folder(
        db_url,
        idle_s=0.01,
        round_s=0.01,
        fold_slice=500,
        lists_per_round=10,
        on_fold=lambda n, _s: slices.append(n),
        on_lists=lambda _paired, refreshed, _p, _r: rounds.append(refreshed),
    )
    folder.start_thread()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = conn.execute(
            "SELECT folded_events, pending_events, pending_pair_events, pending_lists FROM recsql.fold_status"
        ).fetchone()
        if status["folded_events"] == 2000 and not any(
            (status["pending_events"], status["pending_pair_events"], status["pending_lists"])
        ):
            break
        time.sleep(0.05)
    folder.stop()
    assert status["folded_events"] == 2000, status
    assert sum(slices) == 2000
    assert slices == [500, 500, 500, 500]
    assert max(rounds) > 10  # refresh rounds grew once the lanes had caught up
    assert_same_state(snapshot(conn), rebuilt_snapshot(conn))
