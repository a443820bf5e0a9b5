"""The folder loop: keeps derived state within a fraction of a second of the event log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from recsql import api, db
from recsql.errors import RecsqlError

log = logging.getLogger("recsql.worker")

MAINTAIN_EVERY_S = 3600.0


class Loop:
    """A loop that runs in the foreground (``run``) or in a daemon thread, until ``stop()``."""

    thread_name = "recsql-loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def start_thread(self) -> None:
        """Run the loop in a daemon thread (used by `recsql demo` and `recsql serve --with-worker`)."""
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()


class Folder(Loop):
    """Folds events and refreshes neighbour lists in rounds: every ``round_s`` while there is work,
    every ``idle_s`` when there is none. While events keep coming, lists are refreshed at most
    every ``refresh_s``; as soon as a round finds nothing new, at once.

    Each round folds everything pending, then refreshes at most ``lists_per_round`` neighbour lists
    (oldest change first), so a burst of events cannot starve folding. Spacing busy rounds lets a
    trickle of events be folded in batches instead of one fold per event, which keeps the
    folder from taking a whole core away from the writers; state lags by at most about one round.
    """

    thread_name = "recsql-folder"

    def __init__(
        self,
        url: str | None = None,
        *,
        idle_s: float = 0.1,
        round_s: float = 0.25,
        refresh_s: float = 1.0,
        lists_per_round: int = 5000,
        on_fold: Callable[[int, float], None] | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.idle_s = idle_s
        self.round_s = round_s
        self.refresh_s = refresh_s
        self.lists_per_round = lists_per_round
        self.on_fold = on_fold
        self.folded = 0

    @staticmethod
    def _maintenance_due(conn: psycopg.Connection[Any]) -> bool:
        """Whether recsql.maintain() last ran more than MAINTAIN_EVERY_S ago (by any worker)."""
        row = conn.execute(
            "SELECT maintained_at IS NULL OR maintained_at < now() - make_interval(secs => %s) AS due"
            " FROM recsql.fold_state",
            (MAINTAIN_EVERY_S,),
        ).fetchone()
        return bool(row and row["due"])

    def run(self) -> None:
        """Fold until stop() is called; reconnect after database errors."""
        while not self._stop.is_set():
            try:
                with db.connection(self.url) as conn:
                    # The folder's commits need not wait for the disk: derived state and the inbox
                    # rows it consumed commit together, so a fold lost in a crash is simply redone.
                    # Writers' commits then do not queue behind the folder's WAL flushes.
                    conn.execute("SET synchronous_commit = off")
                    last_refresh = 0.0
                    while not self._stop.is_set():
                        if self._maintenance_due(conn):
                            api.maintain(conn)
                        started = time.perf_counter()
                        n = api.fold(conn)
                        # Under steady traffic the same popular items' lists are marked again
                        # every round: refreshing them at most every refresh_s (and at once when
                        # the events stop) does the work once for many events.
                        refreshed = 0
                        if n == 0 or started - last_refresh >= self.refresh_s:
                            refreshed = api.refresh_neighbors(conn, self.lists_per_round)
                            last_refresh = started
                        # Shadow states of candidate models fold the same events after the active one.
                        shadow = api.fold_states(conn, self.lists_per_round)
                        elapsed = time.perf_counter() - started
                        if n:
                            self.folded += n
                            if self.on_fold is not None:
                                self.on_fold(n, elapsed)
                        pause = self.round_s if (n or refreshed or shadow) else self.idle_s
                        self._stop.wait(max(0.0, pause - elapsed))
            except (psycopg.Error, RecsqlError) as exc:
                log.warning("folder: %s; retrying in 2 s", exc)
                self._stop.wait(2.0)
