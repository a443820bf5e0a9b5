"""The embedding loop: wakes on NOTIFY, embeds queued items, keeps behaviour vectors fresh.

Work comes from recsql.embedding_queue. A batch is claimed with FOR UPDATE SKIP LOCKED, embedded,
written and deleted from the queue in one transaction, so several workers share the queue without
doing the same work twice, and a worker killed mid-batch loses nothing: its transaction rolls back
and the rows are there for the next one.

Wake-ups: the items triggers NOTIFY ``recsql_embeddings`` when an item is created or its text
changes; fold() NOTIFYs ``recsql_folded`` after folding events (behaviour vectors may be due).
Without notifications the loop still polls every ``idle_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo

from recsql import db
from recsql.embeddings import behavior, store, text
from recsql.errors import RecsqlError
from recsql.worker import Loop

log = logging.getLogger("recsql.embeddings")

BEHAVIOR_FIT_LOCK = 7274006961524951346  # one full refit at a time, across workers
MIN_FIT_ITEMS = 20


class Embedder(Loop):
    """Keeps item vectors fresh until stop() is called."""

    thread_name = "recsql-embedder"

    def __init__(
        self,
        url: str | None = None,
        *,
        batch: int = 64,
        idle_s: float = 1.0,
        behavior_check_s: float = 10.0,
        text_threads: int = 1,
        spaces: tuple[str, ...] = ("text", "behavior"),
        on_batch: Callable[[str, int, float], None] | None = None,
        encoder: text.TextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.batch = batch
        self.idle_s = idle_s
        self.behavior_check_s = behavior_check_s
        self.text_threads = text_threads
        self.spaces = spaces
        self.on_batch = on_batch
        self.embedded = {"text": 0, "behavior": 0}
        self._encoder: text.TextEncoder | None = encoder  # shared by tests; loaded by run() otherwise
        self._text_disabled: str | None = None
        self._last_behavior_check = 0.0
        self._vector_info: TypeInfo | None = None

    def run(self) -> None:
        """Work until stop(); reconnect after database errors."""
        if "text" in self.spaces and self._encoder is None:
            self._prepare_text()
        while not self._stop.is_set():
            try:
                with db.connection(self.url) as listener, db.connection(self.url) as conn:
                    listener.execute("LISTEN recsql_embeddings")
                    listener.execute("LISTEN recsql_folded")
                    while not self._stop.is_set():
                        if self.round(conn) == 0:
                            # Sleep until a NOTIFY (or the poll interval); drain what piled up.
                            for _ in listener.notifies(timeout=self.idle_s, stop_after=1):
                                pass
            except (psycopg.Error, RecsqlError) as exc:
                log.warning("embedder: %s; retrying in 2 s", exc)
                self._stop.wait(2.0)

    # -- one round ---------------------------------------------------------------------------

    def round(self, conn: psycopg.Connection[Any]) -> int:
        """Do what is due now; return how many items were embedded."""
        n = 0
        if "text" in self.spaces and self._encoder is not None:
            n += self._drain(conn, "text", self._text_batch)
        if "behavior" in self.spaces:
            now = time.monotonic()
            if now - self._last_behavior_check >= self.behavior_check_s:
                self._last_behavior_check = now
                n += self.refit_behavior_if_due(conn)
                conn.execute("SELECT recsql.queue_behavior_refresh()")
            # A few behaviour batches per round, then back to the text queue: a new product's
            # vector is what a shopper waits for; behaviour refreshes can trail.
            n += self._drain(conn, "behavior", self._behavior_batch, max_batches=4)
        return n

    def _drain(
        self,
        conn: psycopg.Connection[Any],
        space_name: str,
        work: Callable[..., int],
        max_batches: int | None = None,
    ) -> int:
        total = 0
        batches = 0
        while not self._stop.is_set() and (max_batches is None or batches < max_batches):
            batches += 1
            started = time.perf_counter()
            with conn.transaction():
                claimed = store.claim(conn, space_name, self.batch)
                if not claimed:
                    break
                done = work(conn, claimed)
                store.done(conn, space_name, [r["item_key"] for r in claimed])
            total += done
            self.embedded[space_name] += done
            if self.on_batch is not None:
                self.on_batch(space_name, len(claimed), time.perf_counter() - started)
        return total

    # -- text --------------------------------------------------------------------------------

    def _prepare_text(self) -> None:
        reason = text.unavailable_reason()
        if reason is not None:
            self._text_disabled = reason
            log.warning("%s", reason)
            return
        started = time.perf_counter()
        self._encoder = text.TextEncoder(threads=self.text_threads)
        log.info("text space: %s loaded in %.1f s", self._encoder.version, time.perf_counter() - started)

    @property
    def text_disabled(self) -> str | None:
        """Why the text space is off in this worker, or None."""
        return self._text_disabled

    def _text_batch(self, conn: psycopg.Connection[Any], claimed: list[dict[str, Any]]) -> int:
        assert self._encoder is not None
        keys, texts, hashes, gone = [], [], [], []
        for row in claimed:
            body = text.item_text(row["title"], row["category"], row["properties"])
            if not body:
                gone.append(row["item_key"])
                continue
            digest = text.source_hash(body)
            if digest == row["source_hash"]:
                continue  # the text that matters did not change
            keys.append(row["item_key"])
            texts.append(body)
            hashes.append(digest)
        store.delete(conn, "text", gone)
        if keys:
            vectors = self._encoder.encode(texts)
            store.write(
                conn, "text", keys, vectors, model_version=self._encoder.version, source_hashes=hashes
            )
        return len(keys)

    # -- behaviour ---------------------------------------------------------------------------

    def refit_behavior_if_due(self, conn: psycopg.Connection[Any], *, force: bool = False) -> int:
        """Refit the behaviour space from all pairs when it was never fitted or its fit is stale."""
        due = conn.execute(
            "SELECT sp.enabled AND (%s OR sp.fitted_at IS NULL OR sp.fitted_at < now() - s.behavior_refit_interval)"
            " AS due FROM recsql.embedding_spaces sp CROSS JOIN recsql.settings s WHERE sp.name = 'behavior'",
            (force,),
        ).fetchone()
        if not due or not due["due"]:
            return 0
        got = conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (BEHAVIOR_FIT_LOCK,)).fetchone()
        if not got or not got["ok"]:
            return 0  # another worker is fitting
        try:
            return self._refit(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (BEHAVIOR_FIT_LOCK,))

    def _refit(self, conn: psycopg.Connection[Any]) -> int:
        sp = store.space(conn, "behavior")
        assert sp is not None
        started = time.perf_counter()
        a, b, n = store.pairs(conn)
        if len(np.unique(a)) < max(MIN_FIT_ITEMS, 2):
            return 0
        result = behavior.fit(a, b, n, dim=sp.dim)
        # Each item's co-occurrence total: what folding it in for its neighbours later needs.
        totals = np.asarray(result.row_sums, dtype=np.int64)
        version = f"{behavior.SCHEME}-{sp.dim}@{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
        store.replace_space(
            conn, "behavior", result.item_keys, result.vectors, totals, result.meta(), version
        )
        log.info(
            "behavior space refitted: %d items from %d pairs in %.1f s",
            len(result.item_keys),
            len(a),
            time.perf_counter() - started,
        )
        self.embedded["behavior"] += len(result.item_keys)
        return len(result.item_keys)

    def _vector_type(self, conn: psycopg.Connection[Any]) -> TypeInfo:
        """pgvector's type, looked up once."""
        if self._vector_info is None:
            self._vector_info = TypeInfo.fetch(conn, "vector")
            if self._vector_info is None:
                raise RecsqlError("the vector type (pgvector) is missing from the database")
        return self._vector_info

    def _behavior_batch(self, conn: psycopg.Connection[Any], claimed: list[dict[str, Any]]) -> int:
        sp = store.space(conn, "behavior")
        if sp is None or sp.fitted_at is None:
            return 0
        keys: list[int] = []
        vectors: list[np.ndarray[Any, Any]] = []
        supports: list[int | None] = []
        totals: list[int | None] = []
        missing = np.full(sp.dim, np.nan, dtype=np.float32)
        # Partner vectors in binary: a popular item has thousands of partners, and parsing their
        # text form number by number took longer than the rest of the batch.
        with conn.cursor(binary=True) as partners:
            register_vector_info(partners, self._vector_type(conn))  # type: ignore[arg-type]
            for row in claimed:
                key = row["item_key"]
                # The whole row: partners without a vector count in the item's total (NaN rows).
                pair_rows = partners.execute(
                    "SELECT p.partner, p.n, e.embedding AS v, e.pair_total"
                    " FROM recsql.item_pair_sides p"
                    " LEFT JOIN recsql.item_embeddings e ON e.space = 'behavior' AND e.item_key = p.partner"
                    " WHERE p.kind = 'v' AND p.item_key = %s",
                    (key,),
                ).fetchall()
                if not pair_rows:
                    continue
                vec = behavior.fold_in(
                    np.array([r["partner"] for r in pair_rows], dtype=np.int64),
                    np.array([r["n"] for r in pair_rows], dtype=np.float64),
                    np.stack([r["v"].to_numpy() if r["v"] is not None else missing for r in pair_rows]),
                    np.array([r["pair_total"] or r["n"] for r in pair_rows], dtype=np.float64),
                    sp.fit_meta,
                )
                if vec is None:
                    continue
                support = conn.execute(
                    "SELECT n_events FROM recsql.item_stats WHERE item_key = %s", (key,)
                ).fetchone()
                keys.append(key)
                vectors.append(vec)
                supports.append(support["n_events"] if support else None)
                # The rows just read are all the item's pairs: their sum is its co-occurrence total.
                totals.append(sum(int(r["n"]) for r in pair_rows))
        if keys:
            store.write(
                conn,
                "behavior",
                keys,
                np.stack(vectors).astype(np.float32),
                model_version=sp.model_version,
                supports=supports,
                pair_totals=totals,
            )
        return len(keys)
