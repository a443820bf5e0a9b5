"""The folder loop: keeps derived state within a fraction of a second of the event log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, LiteralString

import psycopg

from recsql import api, db
from recsql.errors import RecsqlError

log = logging.getLogger("recsql.worker")

MAINTAIN_EVERY_S = 3600.0
# Events waiting for the fold lane beyond which the list lane treats itself as behind a backlog.
BACKLOG_EVENTS = 10_000
# Seconds of adding pairs in one round beyond which the list lane treats itself as behind a backlog.
BACKLOG_PAIRS_S = 1.0
# The parts of each fold's queued pairs (recsql.pair_queue.part, by item_a modulo 4), in the order
# the list lane adds them; the fold lane helps from the other end.
PARTS = (0, 1, 2, 3)
# The list lane's view at the start of a round (Folder._round_state). The sequence is read only
# where this role may (a CASE is evaluated lazily), so that the query cannot fail on it.
_ROUND_STATE: LiteralString = (
    "SELECT q.readable, CASE WHEN q.readable THEN pg_sequence_last_value(q.name::regclass) END AS seq,"
    " (SELECT min(p.queued_at) < now() - make_interval(secs => %s) FROM recsql.pair_queue p) AS old,"
    " (SELECT coalesce(sum(i.n), 0)::bigint FROM recsql.event_inbox i) AS pending,"
    " (SELECT coalesce(max(h.n), 0) FROM (SELECT sum(p.events) AS n FROM recsql.pair_queue p GROUP BY p.part) h)"
    " AS queued"
    " FROM (SELECT s.name, has_sequence_privilege(s.name, 'SELECT, USAGE') AS readable"
    " FROM pg_get_serial_sequence('recsql.events', 'seq') AS s(name)) q"
)
# Refresh rounds grow up to this many times lists_per_round while many lists are due (see
# Folder._lists_round).
BULK_ROUNDS = 4
# Lists due in a steady-traffic refresh round from which the list lane asks the fold lane to refresh
# half of them beside it (about 40 ms of work each side at this size).
SHARED_REFRESH_LISTS = 500


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
    every ``refresh_s`` (every ``backlog_refresh_s`` while a backlog is being worked off); as soon
    as a round finds nothing new, at once. With the defaults (every round) a new pair shows in
    ``similar_items()`` within a second of its commit under steady traffic up to 3,000 events/s on
    two cores, 99% of the time at 5,000 (``bench/freshness.py``).

    With ``lanes=2`` (the default) the work runs in two sessions side by side, one core each: the
    fold lane folds events into counts and statistics and queues their pair counts
    (``recsql.fold(defer_pairs => true)``), the list lane adds those pairs (``recsql.fold_pairs()``,
    part by part) and refreshes the lists; with nothing to fold, the fold lane adds the parts the
    list lane has not taken or refreshes lists beside it, and between folds it refreshes half of a big round when the list
    lane asks (see ``_share_refresh``). With ``lanes=1`` one session does both, one after the other.

    Each round folds everything pending (the fold lane: a slice of a backlog, at most ``fold_slice``
    events, oldest first: big folds cost less per event, and the two lanes share the last one's
    pairs), while writers outpace it the list lane leaves queued pairs for bigger drains later
    (see ``_yield_to_writers``), then refreshes ``lists_per_round`` neighbour lists (oldest change first;
    bigger rounds while many are due), so a burst of events cannot starve folding. Spacing busy rounds lets a
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
        refresh_s: float = 0.25,
        backlog_refresh_s: float = 10.0,
        lists_per_round: int = 5000,
        fold_slice: int = 250_000,
        lanes: int = 2,
        on_fold: Callable[[int, float], None] | None = None,
        on_lists: Callable[[int, int, float, float], None] | None = None,
    ) -> None:
        super().__init__()
        if lanes not in (1, 2):
            raise ValueError(f"lanes must be 1 or 2, not {lanes}")
        self.url = url
        self.idle_s = idle_s
        self.round_s = round_s
        self.refresh_s = refresh_s
        self.backlog_refresh_s = backlog_refresh_s
        self.lists_per_round = lists_per_round
        self.fold_slice = fold_slice
        self.lanes = lanes
        self.on_fold = on_fold
        self.on_lists = on_lists
        self.folded = 0
        # Set by the fold lane when a fold queued pairs (and by stop()): the list lane starts its
        # next round at once instead of at its next tick, a quarter of a second off freshness.
        self._queued = threading.Event()
        # Set by the list lane when a refresh round under steady traffic is big enough to share:
        # the fold lane, between its folds, refreshes _help_lists of the due lists beside it.
        self._help = threading.Event()
        self._help_lists = 0
        self._last_seq: int | None = None
        self._yielding = True

    def stop(self) -> None:
        self._queued.set()
        self._help.set()
        super().stop()

    @staticmethod
    def _maintenance_due(conn: psycopg.Connection[Any]) -> bool:
        """Whether recsql.maintain() last ran more than MAINTAIN_EVERY_S ago (by any worker)."""
        row = conn.execute(
            "SELECT maintained_at IS NULL OR maintained_at < now() - make_interval(secs => %s) AS due"
            " FROM recsql.fold_state",
            (MAINTAIN_EVERY_S,),
        ).fetchone()
        return bool(row and row["due"])

    @staticmethod
    def _without_events(conn: psycopg.Connection[Any], call: Callable[[], int]) -> int:
        """Run ``call`` in a transaction that first promises to insert no events
        (recsql._promise_no_events), so that folding does not wait for it: adding a backlog's pairs
        or refreshing thousands of lists takes seconds, and events committed meanwhile would
        otherwise wait for it to end before the fold lane may take them."""
        with conn.transaction():
            conn.execute("SELECT recsql._promise_no_events()")
            return call()

    @staticmethod
    def _pairs_queued(conn: psycopg.Connection[Any]) -> bool:
        """Whether folds have queued pair counts the list lane has not added yet."""
        row = conn.execute("SELECT EXISTS (SELECT 1 FROM recsql.pair_queue) AS q").fetchone()
        return bool(row and row["q"])

    @staticmethod
    def _events_pending(conn: psycopg.Connection[Any]) -> int:
        """Events committed and not folded yet: fold_status.pending_events alone (the inbox is a few
        rows), without the view's count of pending lists, which a busy round need not pay for."""
        row = conn.execute("SELECT coalesce(sum(n), 0) AS n FROM recsql.event_inbox").fetchone()
        return int(row["n"]) if row else 0

    def run(self) -> None:
        """Fold until stop() is called; reconnect after database errors.

        Any other error in either lane stops both and is raised here: a lane must not die quietly
        while the other goes on (pairs would queue up unseen).
        """
        if self.lanes == 1:
            self._connected(self._one_lane)
            return
        failed: list[BaseException] = []

        def list_lane() -> None:
            try:
                self._connected(self._list_lane)
            except BaseException as exc:
                failed.append(exc)
                self._stop.set()

        lists = threading.Thread(target=list_lane, name=f"{self.thread_name}-lists", daemon=True)
        lists.start()
        try:
            self._connected(self._fold_lane)
        finally:
            self._stop.set()
            lists.join(timeout=30)
        if failed:
            raise RuntimeError("the folder's list lane failed") from failed[0]

    def _connected(self, lane: Callable[[psycopg.Connection[Any]], None]) -> None:
        """Run ``lane`` on a connection of its own until stop(), reconnecting after errors."""
        while not self._stop.is_set():
            try:
                with db.connection(self.url) as conn:
                    # The folder's commits need not wait for the disk: derived state and the inbox
                    # rows (or queued pairs) it consumed commit together, so a fold lost in a crash
                    # is simply redone. Writers' commits then do not queue behind its WAL flushes.
                    conn.execute("SET synchronous_commit = off")
                    lane(conn)
            except (psycopg.Error, RecsqlError) as exc:
                log.warning("folder: %s; retrying in 2 s", exc)
                self._stop.wait(2.0)

    def _folded(self, n: int, started: float) -> None:
        if n:
            self.folded += n
            if self.on_fold is not None:
                self.on_fold(n, time.perf_counter() - started)

    def _pause(self, busy: bool, started: float, wake: threading.Event | None = None) -> None:
        pause = self.round_s if busy else self.idle_s
        (wake or self._stop).wait(max(0.0, pause - (time.perf_counter() - started)))

    def _add_pairs(self, conn: psycopg.Connection[Any], parts: tuple[int, ...]) -> int:
        """Add the queued pairs part by part (``parts`` in that order), each part in a transaction of
        its own that skips a part the other lane is adding: at the end of a backlog the two lanes add
        a fold's parts side by side, the one done first taking the parts left. Returns the events
        whose pairs it added (each part counts all of its folds' events)."""
        return max(
            self._without_events(conn, partial(api.fold_pairs, conn, part, wait=False)) for part in parts
        )

    def _add_queued(self, conn: psycopg.Connection[Any], queued: int) -> int:
        """The list lane's drain of ``queued`` events' pairs: under steady traffic (fewer than
        BACKLOG_EVENTS) all parts in one transaction, a quarter of the fixed cost of four; else, or
        while the fold lane is adding a part, part by part, so that both lanes can share them."""
        if queued < BACKLOG_EVENTS:
            paired = self._without_events(conn, partial(api.fold_pairs, conn, None, wait=False))
            if paired:
                return paired
        return self._add_pairs(conn, PARTS)

    def _lists_round(self, conn: psycopg.Connection[Any], caught_up: bool) -> int:
        """How many lists one refresh round takes: lists_per_round; once the lanes have caught up
        (no events or pairs waiting) and more than twice that many lists are due (the end of a
        bulk of events, a settings change), half of them, up to BULK_ROUNDS times lists_per_round.
        Past 10,000 lists a round recomputes them in one pass over the pairs (see
        recsql.refresh_neighbors), at about half the cost per list of patching them few at a time.
        Not before: behind a backlog, most lists refreshed would be marked again by the next pairs.
        """
        if not caught_up:
            return self.lists_per_round
        row = conn.execute("SELECT count(*) AS n FROM recsql.neighbor_dirty").fetchone()
        pending = int(row["n"]) if row else 0
        if pending <= 2 * self.lists_per_round:
            return self.lists_per_round
        return min(pending // 2, BULK_ROUNDS * self.lists_per_round)

    def _refresh_due(self, since_refresh: float, paired: int, backlog: bool) -> bool:
        """Whether a list-lane round refreshes lists, ``since_refresh`` seconds after the last one
        that did: at once when no pairs came (and no backlog waits), else every refresh_s (every
        backlog_refresh_s behind a backlog). Rounds start when a fold wakes the lane, so they come
        about round_s apart, some a little sooner: without half a round's slack, a refresh due every
        second round would often wait for the third."""
        if paired == 0 and not backlog:
            return True
        every = self.backlog_refresh_s if backlog else self.refresh_s
        return since_refresh >= every - self.round_s / 2

    def _fold_lane(self, conn: psycopg.Connection[Any]) -> None:
        """Events into counts and statistics; their pairs are queued for the list lane."""
        while not self._stop.is_set():
            if self._maintenance_due(conn):
                api.maintain(conn)
            started = time.perf_counter()
            n = api.fold(conn, defer_pairs=True, max_events=self.fold_slice)
            # Nothing to fold: help the list lane. With pairs queued, add the parts it is not adding
            # (it starts with part 0, this lane with the last); else refresh lists (disjoint ones, side by side), unless it
            # is adding pairs. Queued pairs are checked first: sizing the round counts the due
            # lists, tens of thousands behind a backlog, which every idle poll would otherwise pay for.
            refreshed = paired = 0
            helped = time.perf_counter()
            if not n and self._pairs_queued(conn):
                paired = self._add_pairs(conn, PARTS[::-1])
            elif not n:
                lists = self._lists_round(conn, True)
                refreshed = self._without_events(
                    conn, partial(api.refresh_neighbors, conn, lists, wait=False)
                )
            if n:
                self._queued.set()
            # Shadow states of candidate models fold the same events after the active one.
            shadow = api.fold_states(conn, self.lists_per_round)
            self._folded(n, started)
            if (paired or refreshed) and self.on_lists is not None:
                took = time.perf_counter() - helped
                self.on_lists(paired, refreshed, took if paired else 0.0, took if refreshed else 0.0)
            busy = bool(n or paired or refreshed or shadow)
            self._pause(busy, started, self._help)
            if self._help.is_set() and not self._stop.is_set():
                self._help.clear()
                self._help_refresh(conn)
                self._pause(busy, started)

    def _help_refresh(self, conn: psycopg.Connection[Any]) -> None:
        """The fold lane's share of a big refresh round under steady traffic: the oldest due lists the
        list lane has not taken (they pick with skip locked), at most _help_lists. It returns at once
        if pairs were queued meanwhile (refresh_neighbors without wait)."""
        helped = time.perf_counter()
        refreshed = self._without_events(
            conn, partial(api.refresh_neighbors, conn, max(1, self._help_lists), wait=False)
        )
        if refreshed and self.on_lists is not None:
            self.on_lists(0, refreshed, 0.0, time.perf_counter() - helped)

    def _share_refresh(self, conn: psycopg.Connection[Any], lists: int) -> int:
        """How many lists the list lane refreshes itself in a steady-traffic round of up to ``lists``:
        all of them, or half of those due once they are SHARED_REFRESH_LISTS or more, the fold lane
        (mostly idle between its folds under steady traffic) being asked to refresh the other half.
        At 5,000 events/s the list lane was otherwise busy 0.96 s of every second."""
        row = conn.execute("SELECT count(*) AS n FROM recsql.neighbor_dirty").fetchone()
        due = min(int(row["n"]) if row else 0, lists)
        if due < SHARED_REFRESH_LISTS:
            return lists
        self._help_lists = due // 2
        self._help.set()
        return due - due // 2

    def _list_lane(self, conn: psycopg.Connection[Any]) -> None:
        """Queued pairs into item_pairs, and changed neighbour lists refreshed."""
        last_refresh = 0.0
        while not self._stop.is_set():
            started = time.perf_counter()
            self._queued.clear()
            state = self._round_state(conn)
            if self._yield_to_writers(state):
                self._pause(True, started)
                continue
            # One query when nothing is queued, not transactions that would find nothing.
            paired = self._add_queued(conn, state["queued"]) if state["queued"] else 0
            paired_at = time.perf_counter()
            # Under steady traffic the same popular items' lists are marked again every round:
            # refreshing them at most every refresh_s (and at once when the pairs stop) does the
            # work once for several rounds' events. The default, every round, keeps lists within a
            # second of the events at 3,000 events/s (every second round missed it for 2% there)
            # for about 0.06 cores more at 1,000 events/s. Behind a backlog (adding the pairs took longer than
            # BACKLOG_PAIRS_S, or a bulk of events waits for the fold lane), the next drains mark
            # most lists again: they wait until it is worked off, or at most backlog_refresh_s.
            backlog = paired_at - started >= BACKLOG_PAIRS_S or self._events_pending(conn) >= BACKLOG_EVENTS
            refreshed = 0
            if self._refresh_due(started - last_refresh, paired, backlog):
                lists = self._lists_round(conn, paired == 0 and not backlog)
                if paired and not backlog:
                    lists = self._share_refresh(conn, lists)
                refreshed = self._without_events(conn, partial(api.refresh_neighbors, conn, lists))
                last_refresh = started
            if (paired or refreshed) and self.on_lists is not None:
                self.on_lists(paired, refreshed, paired_at - started, time.perf_counter() - paired_at)
            self._pause(bool(paired or refreshed), started, self._queued)

    def _round_state(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        """What a list-lane round starts from, in one query: the events whose pairs are queued
        (``queued``, as fold_status.pending_pair_events), the events the fold lane has not folded
        (``pending``), whether the oldest queued pairs waited backlog_refresh_s (``old``, null when
        none are queued), and the events' sequence (``seq``, null when this role may not read it,
        ``readable`` false)."""
        row = conn.execute(_ROUND_STATE, (self.backlog_refresh_s,)).fetchone()
        assert row is not None  # one row, always
        return dict(row)

    def _yield_to_writers(self, state: dict[str, Any]) -> bool:
        """Whether the list lane leaves the queued pairs for now (``state`` from _round_state):
        while writers are still inserting (the events' sequence moved since the lane last looked)
        faster than the fold lane folds (a backlog of BACKLOG_EVENTS or more), and no queued pairs
        have waited backlog_refresh_s yet.

        Then the writers, the fold lane and the list lane would share the cores, and the fold lane,
        which every later step waits for, would get only part of one. Left alone, the queued pairs
        are added in bigger drains once the writers pause (or after backlog_refresh_s, the bound a
        backlog already puts on refreshing lists). Streaming 1M events (bench/ingest.py) on two
        cores, together with the four parts of migration 0016 this cut the cores' idle time from a
        mean of 6.5 to 4.8 core-seconds (six interleaved pairs of runs; see the README)."""
        if not state["readable"]:
            if self._yielding:  # a role that may not read the sequence: add pairs as they come
                log.warning(
                    "folder: the events' sequence is not readable; the list lane will not yield to writers"
                )
                self._yielding = False
            return False
        seq = state["seq"]
        writing = seq is not None and self._last_seq is not None and seq > self._last_seq
        self._last_seq = seq
        # "old" is null when nothing is queued: nothing to leave.
        return bool(writing and state["old"] is False and state["pending"] >= BACKLOG_EVENTS)

    def _one_lane(self, conn: psycopg.Connection[Any]) -> None:
        """Both lanes' work in one session, one after the other."""
        last_refresh = 0.0
        while not self._stop.is_set():
            if self._maintenance_due(conn):
                api.maintain(conn)
            started = time.perf_counter()
            n = api.fold(conn)
            folded_at = time.perf_counter()
            refreshed = 0
            # The two lanes' rule (with its slack), without their backlog test: here a refresh
            # already waits for the fold before it.
            if self._refresh_due(started - last_refresh, n, False):
                refreshed = api.refresh_neighbors(conn, self._lists_round(conn, n == 0))
                last_refresh = started
            if refreshed and self.on_lists is not None:
                self.on_lists(0, refreshed, 0.0, time.perf_counter() - folded_at)
            shadow = api.fold_states(conn, self.lists_per_round)
            self._folded(n, started)
            self._pause(bool(n or refreshed or shadow), started)
