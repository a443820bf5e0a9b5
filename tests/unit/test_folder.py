"""The worker's fold lane: how much of a backlog it folds per round."""

from __future__ import annotations

import pytest

from recsql.worker import MIN_SLICE, Folder


@pytest.mark.parametrize(
    ("pending", "expected"),
    [
        (0, 100_000),  # nothing or a trickle: everything pending, in one fold
        (2 * MIN_SLICE - 1, 100_000),  # a small backlog: in one fold as well
        (2 * MIN_SLICE, MIN_SLICE),
        (150_000, 75_000),  # a draining backlog: half of what is left
        (1_000_000, 100_000),  # a big one: at most fold_slice
    ],
)
def test_fold_lane_slices_a_backlog(pending: int, expected: int) -> None:
    assert Folder(fold_slice=100_000)._slice(pending) == expected


def test_slices_shrink_as_a_backlog_drains() -> None:
    folder = Folder(fold_slice=100_000)
    pending, slices = 400_000, []
    while pending:
        take = min(pending, folder._slice(pending))
        slices.append(take)
        pending -= take
    assert slices == [100_000, 100_000, 100_000, 50_000, 25_000, 25_000]


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
