"""The worker's lanes: how many lists a refresh round takes, and when a lane wakes."""

from __future__ import annotations

import threading
import time

import pytest

from recsql import api
from recsql.worker import Folder


class DueLists:
    """Stands in for a connection: answers the count of lists due."""

    def __init__(self, due: int) -> None:
        self.due = due
        self.asked = 0

    def execute(self, query: str) -> DueLists:
        assert "neighbor_dirty" in query
        self.asked += 1
        return self

    def fetchone(self) -> dict[str, int]:
        return {"n": self.due}


@pytest.mark.parametrize(
    ("due", "caught_up", "expected"),
    [
        (60_000, False, 5_000),  # behind a backlog: the next pairs would mark them again
        (10_000, True, 5_000),  # a few due: patched few at a time
        (30_000, True, 15_000),  # the end of a bulk: the two lanes take half each
        (60_000, True, 20_000),  # at most BULK_ROUNDS rounds' worth
    ],
)
def test_refresh_rounds_grow_once_caught_up(due: int, caught_up: bool, expected: int) -> None:
    folder = Folder(lists_per_round=5_000)
    conn = DueLists(due)
    assert folder._lists_round(conn, caught_up) == expected  # type: ignore[arg-type]
    assert conn.asked == int(caught_up)


def _pause_in_thread(folder: Folder, wake: threading.Event | None) -> threading.Thread:
    paused = threading.Thread(target=folder._pause, args=(True, time.perf_counter(), wake), daemon=True)
    paused.start()
    return paused


def test_a_fold_wakes_the_list_lane_before_its_next_round() -> None:
    """The list lane waits out a busy round only until the fold lane queues pairs: freshness is not
    one list-lane round longer than it has to be."""
    folder = Folder(round_s=30.0)
    paused = _pause_in_thread(folder, folder._queued)
    time.sleep(0.1)
    assert paused.is_alive()  # waiting out its round
    folder._queued.set()  # what the fold lane does after a fold
    paused.join(timeout=5)
    assert not paused.is_alive()


def test_stop_wakes_a_lane_waiting_for_pairs() -> None:
    folder = Folder(round_s=30.0)
    paused = _pause_in_thread(folder, folder._queued)
    folder.stop()
    paused.join(timeout=5)
    assert not paused.is_alive()


def test_the_fold_lane_pauses_for_its_round_without_a_wake() -> None:
    folder = Folder(round_s=0.3)
    started = time.perf_counter()
    folder._queued.set()  # a wake meant for the list lane does not cut the fold lane's round short
    folder._pause(True, started)
    assert time.perf_counter() - started >= 0.29


@pytest.mark.parametrize(
    ("since", "paired", "backlog", "due"),
    [
        (0.0, 0, False, True),  # no new pairs: refresh what is due at once
        (0.49, 120, False, True),  # two rounds on, the second woken a little early by the fold lane
        (0.24, 120, False, False),  # one round on: the lists wait for the next
        (5.0, 120, True, False),  # behind a backlog the next pairs would mark the lists again
        (0.0, 0, True, False),
        (9.9, 120, True, True),  # but not for longer than backlog_refresh_s
    ],
)
def test_lists_refreshed_every_second_round_wait_for_it_under_steady_traffic(
    since: float, paired: int, backlog: bool, due: bool
) -> None:
    folder = Folder(refresh_s=0.5)  # rounds of 0.25 s, lists refreshed every 0.5 s
    assert folder._refresh_due(since, paired, backlog) is due


def test_by_default_lists_are_refreshed_every_round_even_a_little_early() -> None:
    folder = Folder()  # rounds of 0.25 s, lists refreshed every round
    assert folder.refresh_s == folder.round_s
    assert folder._refresh_due(0.2, 120, False)
    assert not folder._refresh_due(0.1, 120, False)
    assert not folder._refresh_due(5.0, 120, True)  # behind a backlog they still wait


@pytest.mark.parametrize(
    ("due", "own", "asked_help", "helper"),
    [
        (120, 5_000, False, 0),  # a small round: the list lane alone
        (1_000, 500, True, 500),  # shared: half each, the fold lane asked for the other half
        (1_001, 501, True, 500),
        (9_000, 2_500, True, 2_500),  # never more than the round's lists
    ],
)
def test_big_steady_refresh_rounds_are_shared_with_the_fold_lane(
    due: int, own: int, asked_help: bool, helper: int
) -> None:
    folder = Folder(lists_per_round=5_000)
    lists = folder._share_refresh(DueLists(due), 5_000)  # type: ignore[arg-type]
    assert lists == own
    assert folder._help.is_set() is asked_help
    if asked_help:
        assert folder._help_lists == helper
        assert own + helper == min(due, 5_000)


def test_a_request_for_help_wakes_the_fold_lane_between_folds() -> None:
    folder = Folder(round_s=30.0)
    paused = _pause_in_thread(folder, folder._help)
    time.sleep(0.1)
    assert paused.is_alive()
    folder._share_refresh(DueLists(2_000), 5_000)  # type: ignore[arg-type]
    paused.join(timeout=5)
    assert not paused.is_alive()


def test_stop_wakes_a_fold_lane_waiting_for_a_request_for_help() -> None:
    folder = Folder(round_s=30.0)
    paused = _pause_in_thread(folder, folder._help)
    folder.stop()
    paused.join(timeout=5)
    assert not paused.is_alive()


def test_a_role_that_may_not_read_the_events_sequence_stops_yielding(caplog) -> None:
    """Without the privilege to read the events' sequence the list lane adds pairs as they come
    (and says so once) instead of failing its rounds."""
    folder = Folder(idle_s=0)
    # What _round_state returns for such a role behind a growing backlog: the sequence unread.
    state = {"readable": False, "seq": None, "old": False, "pending": 50_000, "queued": 100_000}
    with caplog.at_level("WARNING", logger="recsql.worker"):
        assert folder._yield_to_writers(state) is False
        assert folder._yield_to_writers(state) is False
    assert len([r for r in caplog.records if "will not yield" in r.getMessage()]) == 1
    assert "will not yield to writers" in caplog.text


@pytest.mark.parametrize(
    ("queued", "all_at_once", "expected_calls"),
    [
        (200, 3, [None]),  # steady traffic: every part in one transaction
        (200, 0, [None, 0, 1, 2, 3]),  # the fold lane holds a part: part by part, skipping it
        (50_000, 3, [0, 1, 2, 3]),  # behind a backlog: part by part, for the fold lane to share
    ],
)
def test_the_list_lane_adds_a_trickle_at_once_and_a_backlog_part_by_part(
    monkeypatch, queued: int, all_at_once: int, expected_calls: list[int | None]
) -> None:
    calls: list[int | None] = []

    def fold_pairs(conn: object, part: int | None = None, *, wait: bool = True) -> int:
        assert wait is False
        calls.append(part)
        return all_at_once if part is None else 1

    monkeypatch.setattr(api, "fold_pairs", fold_pairs)
    monkeypatch.setattr(Folder, "_without_events", staticmethod(lambda conn, call: call()))
    folder = Folder(idle_s=0)
    added = folder._add_queued(object(), queued)  # type: ignore[arg-type]
    assert calls == expected_calls
    assert added == (all_at_once if expected_calls == [None] else 1)
