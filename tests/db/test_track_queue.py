"""Group commit of single events: concurrent callers share a statement, each gets its own outcome."""

from __future__ import annotations

import threading

import pytest

from recsql import db, serving
from recsql.errors import BadInput


def test_concurrent_events_share_commits_and_keep_their_outcomes(db_url, conn):
    queue = serving.TrackQueue()
    pool = db.open_pool(db_url, min_size=1, max_size=8)
    events = [serving.Event(f"u{i % 5}", f"p{i % 7}", "view", event_id=f"e{i}") for i in range(60)]
    events += [serving.Event("u1", "p1", "view", event_id="e3")]  # a repeat of e3
    events += [serving.Event("u1", "p1", "no-such-type", event_id="bad")]
    results: list[tuple[str, str]] = []
    errors: list[Exception] = []
    start = threading.Barrier(8)

    def send(part: list[serving.Event]) -> None:
        with pool.connection() as c:
            start.wait()
            for ev in part:
                outcome = queue.track(lambda: c, ev)
                results.append((ev.event_id or "", outcome.status))
                if outcome.error is not None:
                    errors.append(outcome.error)

    threads = [threading.Thread(target=send, args=(events[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    outcomes = dict(results)
    assert len(results) == 62 and outcomes["bad"] == "rejected"
    assert len(errors) == 1 and isinstance(errors[0], BadInput)
    stored = conn.execute("SELECT event_id FROM recsql.events").fetchall()
    assert sorted(r["event_id"] for r in stored) == sorted(f"e{i}" for i in range(60))
    assert all(outcomes[f"e{i}"] == "accepted" for i in range(60) if i != 3)
    assert sorted(status for event_id, status in results if event_id == "e3") == ["accepted", "duplicate"]
    inbox = conn.execute("SELECT count(*) AS n, sum(n) AS events FROM recsql.event_inbox").fetchone()
    assert inbox["events"] == 60 and inbox["n"] < 60  # fewer statements than events: commits were shared


def test_error_reaches_every_caller_of_the_batch(db_url):
    queue = serving.TrackQueue()

    def broken() -> serving.Conn:
        raise RuntimeError("no connection")

    with pytest.raises(RuntimeError):
        queue.track(broken, serving.Event("u", "p", "view"))
    with db.connection(db_url) as c:  # the queue recovered: the next caller stores its event
        assert queue.track(lambda: c, serving.Event("u", "p", "view")).status == "accepted"


def test_a_batch_is_stored_in_its_order_without_ids_stored_before(conn):
    """track_many: events are stored in the batch's order (the replay order); an id stored before
    and a second copy within the batch are duplicates."""
    serving.track_many(conn, [serving.Event("u0", "p0", "view", event_id="old")])
    ids = [f"b{i}" for i in range(40)]
    events = [serving.Event(f"u{i % 3}", f"p{i}", "view", event_id=e) for i, e in enumerate(ids)]
    events.insert(7, serving.Event("u9", "p9", "view", event_id="old"))
    events.insert(20, serving.Event("u9", "p9", "view", event_id="b3"))
    outcomes = serving.track_many(conn, events)
    assert [o.status for o in outcomes].count("duplicate") == 2
    assert outcomes[7].status == outcomes[20].status == "duplicate"
    stored = conn.execute("SELECT event_id, user_id FROM recsql.events ORDER BY seq").fetchall()
    assert [r["event_id"] for r in stored] == ["old", *ids]
    assert all(r["user_id"] != "u9" for r in stored)
