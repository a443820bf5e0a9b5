"""The progress line: rate-limited, percent and ETA when the size is known, silent when disabled."""

from __future__ import annotations

import io
import time

import pytest

from recsql import progress as progress_module
from recsql.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def test_terminal_line_with_percent_and_eta(clock):
    out = Terminal()
    p = Progress("events", total=1000, position=lambda: 250, stream=out)

    clock[0] += 0.1
    p.update(10)  # too soon: nothing
    assert out.getvalue() == ""
    clock[0] += 0.9
    p.update(5000)  # 1 s in, a quarter done: 3 s to go
    assert out.getvalue() == "\revents: 5,000 rows read, 5,000 rows/s, 25% (ETA 0:00:03)"
    clock[0] += 1
    p.done(9000)
    final = out.getvalue().rsplit("\r", 1)[1]
    # padded to cover the longer line before it, then ended
    assert final == "events: 9,000 rows read, 4,500 rows/s, 2.0 s".ljust(56) + "\n"


def test_log_lines_are_rarer_and_disabled_is_silent(clock):
    log = io.StringIO()
    p = Progress("items", stream=log)
    clock[0] += 1
    p.update(10)
    assert log.getvalue() == ""
    clock[0] += progress_module.LOG_INTERVAL_S
    p.update(20)
    assert log.getvalue().startswith("items: 20 rows read,")

    quiet = io.StringIO()
    q = Progress("items", enabled=False, stream=quiet)
    clock[0] += 60
    q.update(1)
    q.note("hello")
    q.done(1)
    assert quiet.getvalue() == ""
