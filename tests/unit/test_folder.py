"""The worker's lanes: how many lists a refresh round takes."""

from __future__ import annotations

import pytest

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
