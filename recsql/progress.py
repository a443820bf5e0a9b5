"""A progress line for long-running commands: rows, rows/s, and percent + ETA when the size is known."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TextIO

# A terminal gets a line redrawn in place; a log file or pipe gets a new line now and then.
TTY_INTERVAL_S = 0.25
LOG_INTERVAL_S = 10.0


class Progress:
    """Report ``rows`` on stderr at most every ``interval`` seconds; silent when not enabled."""

    def __init__(
        self,
        label: str,
        *,
        enabled: bool = True,
        total: int | None = None,
        position: Callable[[], int] | None = None,
        stream: TextIO | None = None,
        unit: str = "rows read",
    ) -> None:
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.total = total if total and position is not None else None
        self._position = position
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._interval = TTY_INTERVAL_S if self._tty else LOG_INTERVAL_S
        self._started = time.monotonic()
        self._next = self._started + self._interval
        self._width = 0

    def update(self, rows: int) -> None:
        """Show ``rows`` if the last report is older than the interval (cheap to call per row)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        self._show(self._line(rows, now), final=False)

    def done(self, rows: int) -> None:
        """Show the final count and end the line."""
        if self.enabled:
            self._show(self._line(rows, time.monotonic(), final=True), final=True)

    def note(self, message: str) -> None:
        """Print a one-off line (e.g. the next phase of the command)."""
        if self.enabled:
            print(message, file=self._stream, flush=True)

    def _line(self, rows: int, now: float, final: bool = False) -> str:
        elapsed = max(now - self._started, 1e-9)
        text = f"{self.label}: {rows:,} {self.unit}, {rows / elapsed:,.0f} {self.unit.split()[0]}/s"
        if final:
            return f"{text}, {elapsed:.1f} s"
        if self.total and self._position is not None:
            done = min(self._position(), self.total)
            if done > 0:
                eta = timedelta(seconds=round(elapsed * (self.total - done) / done))
                text += f", {100 * done / self.total:.0f}% (ETA {eta})"
        return text

    def _show(self, text: str, *, final: bool) -> None:
        if self._tty:
            # Pad with spaces so a shorter line fully covers the previous one.
            self._stream.write("\r" + text.ljust(self._width) + ("\n" if final else ""))
            self._width = len(text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
