"""Embeddings benchmark: HNSW recall and latency at 50,000 items, worker throughput for both spaces,
commit-to-vector freshness, and ingest throughput with and without the embedding worker.

    RECSQL_HOME=/tmp/rh python bench/embeddings.py                # 50,000 items, about 8 minutes on 2 cores
    python bench/embeddings.py --text-vectors encoder             # real all-MiniLM-L6-v2 text vectors
    python bench/embeddings.py --phases hnsw --items 10000 --queries 200

Drops and creates the database recsql_bench_emb (never recsql_bench) and saves
bench/results/embeddings.json. Phases, in order:

hnsw        50,000 items (synth's catalog, each with a generated description), each with a text
            vector (clustered random 384-d by default: category + product noun + adjective + brand +
            colour + material + noise; or all-MiniLM-L6-v2 on the item's text with --text-vectors
            encoder) and a behaviour-like 64-d vector (clustered random: category + series + noise),
            loaded with the HNSW index dropped and then rebuilt from its definition. For random query
            items: recall@10 of the query recsql runs (space filter, ``embedding::vector(D) <=> q``)
            against exact search in numpy, by hnsw.ef_search, and of recsql.similar_items(...,
            method => 'embedding'); latency of both, timed by the client over the local socket.
throughput  text: items/s of Embedder.round embedding --text-items queued items into the full index.
            behaviour: a full refit on a synthetic event stream, twice (the second replaces a fit,
            as the daily refit does), HNSW recall on the fitted vectors before and after VACUUM, and
            the fold-in that drains the behaviour queue after more events.
freshness   an idle Embedder thread (both spaces; only NOTIFY wakes it); one item per commit at
            random intervals; commit -> text vector visible, polled every 5 ms.
ingest      COPY + recsql.flush() of synthetic events per chunk: without the worker, with
            `recsql worker --no-fold` (both spaces) running, and without again; all the while a
            catalog feed edits item descriptions (text work) and folds queue behaviour work. During
            the run with the worker, a probe item is inserted every second and its text freshness
            recorded.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import benchdb
import numpy as np
import numpy.typing as npt
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from recsql import api, db, load, synth
from recsql.embeddings import store, text
from recsql.embeddings.worker import Embedder

DATABASE = "recsql_bench_emb"
ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"recall_at_10": 0.95, "freshness_p99_s": 2.0, "ingest_ratio": 0.8}
DIMS = {"behavior": 64, "text": 384}
Conn = psycopg.Connection[Any]
Floats = npt.NDArray[np.float32]

# Words for item descriptions, so most items' texts differ (synthetic titles repeat).
_COLORS = "black white silver red blue green grey navy olive sand orange purple".split()
_MATERIALS = "aluminium|steel|recycled plastic|bamboo|leather|cotton|carbon fibre|glass|ceramic|nylon".split(
    "|"
)
_SIZES = "small|medium|large|XL|compact|family size|500 ml|1 litre|2-pack|3-pack".split("|")
_FEATURES = (
    "water resistant|two year warranty|lightweight design|fast charging|eco packaging|travel size"
    "|gift box included|dishwasher safe|extra durable|award winning"
).split("|")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def description(rng: random.Random) -> str:
    return (
        f"{rng.choice(_COLORS).capitalize()} {rng.choice(_MATERIALS)}, {rng.choice(_SIZES)}."
        f" {rng.choice(_FEATURES).capitalize()}."
    )


def catalog(n_items: int, seed: int) -> list[dict[str, Any]]:
    """synth's catalog (the same items the event stream uses) with a description per item."""
    rng = random.Random(f"descriptions-{seed}")
    items = synth.catalog(n_items, seed)
    for it in items:
        it["properties"] = {"description": description(rng)}
    return items


# --- vectors -------------------------------------------------------------------------------------


def clustered(items: list[dict[str, Any]], dim: int, seed: int, parts: dict[str, float]) -> Floats:
    """Unit vectors summing one random direction per value of each named item part, plus noise."""
    rng = np.random.default_rng(seed)
    total = np.zeros((len(items), dim))
    for part, scale in parts.items():
        if part == "noise":
            continue
        values = [_part(it, part) for it in items]
        codes = {v: n for n, v in enumerate(sorted(set(values)))}
        directions = rng.standard_normal((len(codes), dim))
        total += scale * directions[[codes[v] for v in values]]
    total += parts.get("noise", 0.0) * rng.standard_normal(total.shape)
    unit: Floats = (total / np.linalg.norm(total, axis=1, keepdims=True)).astype(np.float32)
    return unit


def _part(item: dict[str, Any], part: str) -> str:
    words = item["title"].split()
    desc = item["properties"]["description"]
    return str(
        {
            "category": item["category"],
            "series": f"{item['category']}/{words[0]}",  # synth gives each series one brand
            "noun": " ".join(words[2:]),
            "adjective": words[1],
            "brand": words[0],
            "color": desc.split()[0],
            "material": desc.split(",")[0].split(" ", 1)[1],
        }[part]
    )


BEHAVIOUR_LIKE = {"category": 1.0, "series": 0.8, "noise": 0.7}
TEXT_LIKE = {
    "category": 1.0,
    "noun": 1.0,
    "adjective": 0.5,
    "brand": 0.5,
    "color": 0.3,
    "material": 0.3,
    "noise": 0.3,
}


def copy_vectors(conn: Conn, space: str, keys: list[int], vectors: Floats, chunk: int = 5000) -> None:
    """Write a space's vectors with COPY (through its HNSW index, as the worker does)."""
    for start in range(0, len(keys), chunk):
        with (
            conn.transaction(),
            conn.cursor().copy(
                "COPY recsql.item_embeddings (space, item_key, embedding, model_version) FROM STDIN"
            ) as cp,
        ):
            for key, vec in zip(keys[start : start + chunk], vectors[start : start + chunk], strict=True):
                cp.write_row((space, key, store.vector_text(vec), "bench-clustered-random"))
        log(f"  {space}: {min(start + chunk, len(keys)):,}/{len(keys):,} vectors written")


def read_vectors(url: str, space: str) -> tuple[npt.NDArray[np.int64], Floats]:
    """Every item's vector in a space as (keys, unit rows)."""
    dim = DIMS[space]
    with psycopg.connect(url) as conn:
        register_vector(conn)
        rows = conn.execute(
            sql.SQL(
                "SELECT item_key, embedding::vector({}) FROM recsql.item_embeddings WHERE space = {} ORDER BY 1"
            ).format(sql.Literal(dim), sql.Literal(space))
        ).fetchall()
    keys = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = (
        np.stack([r[1].to_numpy() for r in rows]).astype(np.float32)
        if rows
        else np.zeros((0, dim), np.float32)
    )
    lengths = np.linalg.norm(vectors, axis=1, keepdims=True)
    return keys, (vectors / np.where(lengths > 0, lengths, 1)).astype(np.float32, copy=False)


# --- recall and latency ---------------------------------------------------------------------------


class Exact:
    """Exact cosine scores of query items against every item, for recall with ties counted as hits."""

    def __init__(self, keys: npt.NDArray[np.int64], scores: Floats, queries: list[int]) -> None:
        self.row = {int(k): n for n, k in enumerate(keys)}
        self.scores = scores  # one row per query, the query item itself at -inf
        self.queries = queries

    @classmethod
    def of(
        cls,
        spaces: dict[str, tuple[npt.NDArray[np.int64], Floats]],
        weights: dict[str, float],
        queries: list[int],
    ) -> Exact:
        """Weighted mean cosine over ``spaces`` (one space: plain cosine), as recsql's blend scores."""
        keys = next(iter(spaces.values()))[0]
        total = np.zeros((len(queries), len(keys)), dtype=np.float32)
        for name, (k, vectors) in spaces.items():
            if not np.array_equal(k, keys):
                raise RuntimeError("the spaces hold different items; the blend reference needs the same ones")
            rows = np.searchsorted(k, queries)
            total += weights[name] * (vectors[rows] @ vectors.T)
        total /= sum(weights[n] for n in spaces)
        total[np.arange(len(queries)), np.searchsorted(keys, queries)] = -np.inf
        return cls(keys, total, queries)

    def recall(self, q: int, found: list[int], k: int) -> tuple[float, float]:
        """(recall with ties at the k-th score counted as hits, strict recall against one exact top-k)."""
        s = self.scores[q]
        kth = -np.partition(-s, k - 1)[k - 1]
        got = [self.row[f] for f in found[:k] if f in self.row]
        tie_aware = sum(1 for r in got if s[r] >= kth - 1e-5) / k
        exact_ids = set(np.argpartition(-s, k - 1)[:k].tolist())
        return tie_aware, len(exact_ids & set(got)) / k


def timed_rows(conn: Conn, query: Any, params: Any) -> tuple[list[Any], float]:
    started = time.perf_counter()
    rows = conn.execute(query, params).fetchall()
    return rows, (time.perf_counter() - started) * 1000


def index_query(space: str) -> sql.Composed:
    """The query recsql._embedding_neighbors runs, with the space and dimension as literals (the
    partial index must be provable from the query text), around a stored item's vector."""
    dim = sql.Literal(DIMS[space])
    return sql.SQL(
        "SELECT e.item_key FROM recsql.item_embeddings e WHERE e.space = {s}"
        " ORDER BY e.embedding::vector({d}) <=> (SELECT q.embedding::vector({d}) FROM recsql.item_embeddings q"
        " WHERE q.space = {s} AND q.item_key = %s) LIMIT %s"
    ).format(s=sql.Literal(space), d=dim)


def uses_index(conn: Conn, space: str, key: int) -> str | None:
    """The HNSW index the query's plan scans, or None when it does not use one."""
    plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) ") + index_query(space), (key, 11)).fetchone()
    found = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Index Name", "").endswith("_hnsw"):
            found.append(node["Index Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(next(iter(plan.values()))[0]["Plan"] if plan else {})
    return found[0] if found else None


def measure_index(conn: Conn, space: str, exact: Exact, ef: int, k: int) -> dict[str, Any]:
    """Recall@k and latency of the raw index query at one hnsw.ef_search."""
    conn.execute(sql.SQL("SET hnsw.ef_search = {}").format(sql.Literal(ef)))
    query = index_query(space)
    recalls, strict, ms, short = [], [], [], 0
    for n, key in enumerate(exact.queries):
        rows, t = timed_rows(conn, query, (key, k + 1))
        found = [r["item_key"] for r in rows if r["item_key"] != key][:k]
        short += len(found) < k
        a, b = exact.recall(n, found, k)
        recalls.append(a)
        strict.append(b)
        ms.append(t)
    conn.execute("RESET hnsw.ef_search")
    return {
        "ef_search": ef,
        "recall": round(float(np.mean(recalls)), 4),
        "recall_strict": round(float(np.mean(strict)), 4),
        "queries_below_0_9": int(sum(r < 0.9 for r in recalls)),
        "short_results": short,
        "ms": benchdb.percentiles(ms),
    }


def measure_similar(
    conn: Conn, exact: Exact, ids: dict[int, str], keys: dict[str, int], k: int
) -> dict[str, Any]:
    """Recall@k and latency of recsql.similar_items(item, k, method => 'embedding')."""
    recalls, strict, ms = [], [], []
    for n, key in enumerate(exact.queries):
        rows, t = timed_rows(
            conn, "SELECT item_id FROM recsql.similar_items(%s, %s, method => 'embedding')", (ids[key], k)
        )
        a, b = exact.recall(n, [keys[r["item_id"]] for r in rows], k)
        recalls.append(a)
        strict.append(b)
        ms.append(t)
    return {
        "recall": round(float(np.mean(recalls)), 4),
        "recall_strict": round(float(np.mean(strict)), 4),
        "queries_below_0_9": int(sum(r < 0.9 for r in recalls)),
        "ms": benchdb.percentiles(ms),
    }


def round_trip(conn: Conn, n: int = 500) -> dict[str, float]:
    return benchdb.percentiles([timed_rows(conn, "SELECT 1", None)[1] for _ in range(n)])


def space_weights(conn: Conn) -> dict[str, float]:
    return {r["name"]: r["weight"] for r in conn.execute("SELECT name, weight FROM recsql.embedding_spaces")}


def sample(keys: npt.NDArray[np.int64], n: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(keys.tolist(), min(n, len(keys))))


def hnsw_recall(
    url: str, space: str, efs: list[int], k: int, picked: list[int] | None = None, n: int = 500, seed: int = 1
) -> dict[str, Any]:
    """Raw index query recall and latency for one space, by ef_search."""
    keys, vectors = read_vectors(url, space)
    picked = picked or sample(keys, n, seed)
    exact = Exact.of({space: (keys, vectors)}, {space: 1.0}, picked)
    out: dict[str, Any] = {"items": len(keys), "queries": len(picked)}
    with db.connection(url) as conn:
        out["plan_index"] = uses_index(conn, space, picked[0])
        for key in picked[: max(1, len(picked) // 5)]:  # warm the index pages
            conn.execute(index_query(space), (key, k + 1)).fetchall()
        out["by_ef_search"] = [measure_index(conn, space, exact, ef, k) for ef in efs]
    for r in out["by_ef_search"]:
        log(
            f"  {space}: ef_search {r['ef_search']:>4}: recall@{k} {r['recall']:.4f}"
            f" (strict {r['recall_strict']:.4f}), p50 {r['ms']['p50']:.2f} ms, p99 {r['ms']['p99']:.2f} ms"
        )
    return out


def hnsw_phase(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Recall and latency of the index query per space and of similar_items, at the catalog's size."""
    k = args.k
    with db.connection(url) as conn:
        conn.execute("ANALYZE recsql.item_embeddings")
        conn.execute("ANALYZE recsql.items")
        ids = {
            cast(int, r["item_key"]): cast(str, r["item_id"])
            for r in conn.execute("SELECT item_key, item_id FROM recsql.items")
        }
        weights = space_weights(conn)
        rtt = round_trip(conn)
    keys_of = {v: k_ for k_, v in ids.items()}
    result: dict[str, Any] = {"round_trip_ms": rtt, "space_weights": weights, "spaces": {}}
    vectors = {space: read_vectors(url, space) for space in DIMS}
    common = sorted(set(vectors["text"][0].tolist()) & set(vectors["behavior"][0].tolist()))
    picked = sample(np.array(common, dtype=np.int64), args.queries, args.seed)
    for space in DIMS:
        log(f"hnsw: {space} ({DIMS[space]}-d), {len(picked)} query items")
        result["spaces"][space] = hnsw_recall(url, space, args.ef, k, picked)
        exact = Exact.of({space: vectors[space]}, {space: 1.0}, picked)
        with db.connection(url) as conn:
            # Only this space in the blend: similar_items against the exact neighbours in it.
            conn.execute("UPDATE recsql.embedding_spaces SET weight = 0 WHERE name <> %s", (space,))
            try:
                sim = measure_similar(conn, exact, ids, keys_of, k)
            finally:
                for name, w in weights.items():
                    conn.execute("UPDATE recsql.embedding_spaces SET weight = %s WHERE name = %s", (w, name))
        result["spaces"][space]["similar_items"] = sim
        log(
            f"  {space}: similar_items(method => 'embedding'): recall@{k} {sim['recall']:.4f},"
            f" p50 {sim['ms']['p50']:.2f} ms, p99 {sim['ms']['p99']:.2f} ms"
        )
    exact = Exact.of({s: vectors[s] for s in DIMS}, weights, picked)
    with db.connection(url) as conn:
        result["similar_items_blend"] = measure_similar(conn, exact, ids, keys_of, k)
    sim = result["similar_items_blend"]
    log(
        f"  both spaces {weights}: similar_items recall@{k} {sim['recall']:.4f} against the exact weighted"
        f" mean cosine, p50 {sim['ms']['p50']:.2f} ms, p99 {sim['ms']['p99']:.2f} ms"
    )
    return result


# --- loading --------------------------------------------------------------------------------------


def chunks(stream: Iterator[synth.Event], size: int, total: int) -> Iterator[list[synth.Event]]:
    sent = 0
    while sent < total:
        batch = [e for _, e in zip(range(min(size, total - sent)), stream, strict=False)]
        if not batch:
            return
        sent += len(batch)
        yield batch


def ingest(
    conn: Conn, batches: list[list[synth.Event]], label: str, refresh_each: bool = False
) -> dict[str, Any]:
    """COPY each batch in its own transaction and fold it; refresh the neighbour lists after each
    batch (``refresh_each``, what recsql.flush() does) or once at the end."""
    copy_s = fold_s = refresh_s = 0.0
    n = lists = 0
    started = time.perf_counter()
    for k, batch in enumerate(batches, 1):
        t = time.perf_counter()
        with conn.transaction():
            load.copy_events(conn, batch)
        copy_s += time.perf_counter() - t
        t = time.perf_counter()
        api.fold(conn)
        fold_s += time.perf_counter() - t
        if refresh_each or k == len(batches):
            t = time.perf_counter()
            lists += api.refresh_neighbors(conn)
            refresh_s += time.perf_counter() - t
        n += len(batch)
        elapsed = time.perf_counter() - started
        log(f"  {label}: {n:,} events, {n / elapsed:,.0f}/s; ETA {elapsed / k * (len(batches) - k):.0f} s")
    total = copy_s + fold_s + refresh_s
    return {
        "events": n,
        "seconds": round(total, 2),
        "copy_s": round(copy_s, 2),
        "fold_s": round(fold_s, 2),
        "refresh_s": round(refresh_s, 2),
        "lists_refreshed": lists,
        "events_per_s": round(n / total) if total else 0,
    }


class Progress:
    """on_batch callback of an Embedder: counts items and time, logs rate and ETA every few seconds."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.items = 0
        self.seconds = 0.0
        self._last = time.perf_counter()

    def __call__(self, space: str, n: int, seconds: float) -> None:
        self.items += n
        self.seconds += seconds
        if time.perf_counter() - self._last > 5:
            self._last = time.perf_counter()
            rate = self.items / self.seconds if self.seconds else 0.0
            eta = (self.total - self.items) / rate if rate else 0.0
            log(f"  {self.label}: {self.items:,}/{self.total:,} items, {rate:,.0f}/s; ETA {eta:.0f} s")


def queued(conn: Conn, space: str) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM recsql.embedding_queue WHERE space = %s", (space,)
    ).fetchone()
    return int(row["n"]) if row else 0


def drain_text(url: str, encoder: text.TextEncoder | None, label: str) -> dict[str, Any]:
    """Embedder.round over the text queue until it is empty: items/s with writes and index upkeep."""
    with db.connection(url) as conn:
        total = queued(conn, "text")
        progress = Progress(label, total)
        worker = Embedder(url, spaces=("text",), encoder=encoder, on_batch=progress)
        started = time.perf_counter()
        embedded = worker.round(conn)
        wall = time.perf_counter() - started
    log(f"  {label}: {embedded:,} items in {wall:.1f} s, {embedded / wall:,.0f} items/s")
    return {
        "queued": total,
        "embedded": embedded,
        "seconds": round(wall, 2),
        "items_per_s": round(embedded / wall, 1) if wall else 0,
        "batch": worker.batch,
        "text_threads": worker.text_threads,
    }


def encode(encoder: text.TextEncoder, items: list[dict[str, Any]]) -> Floats:
    """all-MiniLM-L6-v2 vectors of the items' texts (item_text, as the worker composes them)."""
    texts = [text.item_text(it["title"], it["category"], it["properties"]) for it in items]
    unique = sorted(set(texts))
    rows: list[Floats] = []
    started = time.perf_counter()
    for start in range(0, len(unique), 2000):
        rows.append(encoder.encode(unique[start : start + 2000]))
        done = min(start + 2000, len(unique))
        rate = done / (time.perf_counter() - started)
        log(
            f"  encoded {done:,}/{len(unique):,} texts, {rate:,.0f}/s; ETA {(len(unique) - done) / rate:.0f} s"
        )
    row_of = {t: n for n, t in enumerate(unique)}
    return np.concatenate(rows)[[row_of[t] for t in texts]]


@contextmanager
def index_dropped(conn: Conn, space: str) -> Iterator[dict[str, float]]:
    """Drop a space's HNSW index for a bulk load and build it again from its catalog definition."""
    name = f"item_embeddings_{space}_hnsw"
    row = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'recsql' AND indexname = %s", (name,)
    ).fetchone()
    if row is None:
        raise RuntimeError(f"index recsql.{name} is missing")
    conn.execute(sql.SQL("DROP INDEX recsql.{}").format(sql.Identifier(name)))
    timing: dict[str, float] = {}
    try:
        yield timing
    finally:
        started = time.perf_counter()
        conn.execute(row["indexdef"])
        timing["index_build_s"] = round(time.perf_counter() - started, 2)
        log(f"  {space}: index built in {timing['index_build_s']} s")


def fill_vectors(
    url: str, items: list[dict[str, Any]], args: argparse.Namespace, encoder: text.TextEncoder | None
) -> dict[str, Any]:
    """Give every item a behaviour-like and a text vector, loaded with each index dropped and rebuilt."""
    out: dict[str, Any] = {"text_vectors": args.text_vectors, "behavior_vectors": "clustered random"}
    if args.text_vectors == "encoder":
        assert encoder is not None
        log(f"text vectors: all-MiniLM-L6-v2 on {len(items):,} item texts")
        t = time.perf_counter()
        text_vectors = encode(encoder, items)
        out["encode_s"] = round(time.perf_counter() - t, 2)
    else:
        text_vectors = clustered(items, DIMS["text"], args.seed + 1, TEXT_LIKE)
    with db.connection(url) as conn:
        keys = {
            cast(str, r["item_id"]): cast(int, r["item_key"])
            for r in conn.execute("SELECT item_id, item_key FROM recsql.items")
        }
        order = [keys[it["item_id"]] for it in items]
        conn.execute("DELETE FROM recsql.embedding_queue WHERE space = 'text'")
        behaviour = clustered(items, DIMS["behavior"], args.seed, BEHAVIOUR_LIKE)
        for space, vectors in (("behavior", behaviour), ("text", text_vectors)):
            log(f"{space} vectors: {len(items):,} x {DIMS[space]}")
            t = time.perf_counter()
            with index_dropped(conn, space) as timing:
                copy_vectors(conn, space, order, vectors)
            out[space] = {"load_s": round(time.perf_counter() - t, 2), **timing}
    return out


# --- behaviour throughput -------------------------------------------------------------------------


def refit(url: str, label: str) -> dict[str, Any]:
    with db.connection(url) as conn:
        pairs = conn.execute("SELECT count(*) AS n FROM recsql.item_pairs WHERE kind = 'v'").fetchone()
        started = time.perf_counter()
        n = Embedder(url, spaces=("behavior",)).refit_behavior_if_due(conn, force=True)
        wall = time.perf_counter() - started
    log(
        f"  {label}: {n:,} items from {pairs['n'] if pairs else 0:,} pairs in {wall:.1f} s ({n / wall:,.0f} items/s)"
    )
    return {
        "items": n,
        "pairs": pairs["n"] if pairs else 0,
        "seconds": round(wall, 2),
        "items_per_s": round(n / wall, 1),
    }


def dead_tuples(conn: Conn) -> int:
    row = conn.execute(
        "SELECT n_dead_tup AS n FROM pg_stat_user_tables WHERE relid = 'recsql.item_embeddings'::regclass"
    ).fetchone()
    return int(row["n"]) if row else 0


def throughput_phase(
    url: str, args: argparse.Namespace, stream: Iterator[synth.Event], encoder: text.TextEncoder | None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if encoder is not None:
        with db.connection(url) as conn:  # the loaded vectors have no source hash: these are embedded
            conn.execute(
                "INSERT INTO recsql.embedding_queue (space, item_key)"
                " SELECT 'text', item_key FROM recsql.items ORDER BY item_key LIMIT %s ON CONFLICT DO NOTHING",
                (args.text_items,),
            )
        out["text"] = drain_text(url, encoder, "text worker")
    log(f"behaviour: {args.events:,} events for the co-occurrence the fit reads")
    with db.connection(url) as conn:
        out["load"] = ingest(conn, list(chunks(stream, args.chunk, args.events)), "load")
        conn.execute("VACUUM ANALYZE")
    out["refit_first"] = refit(url, "full refit (replaces the behaviour-like vectors)")
    out["refit_second"] = refit(url, "full refit again (replaces a fit, as the scheduled refit does)")
    with db.connection(url) as conn:
        out["dead_tuples_after_refit"] = dead_tuples(conn)
    efs = args.ef
    log("hnsw on the fitted behaviour vectors, right after the refit (dead tuples still in the index)")
    out["recall_after_refit"] = hnsw_recall(url, "behavior", efs, args.k, n=args.queries, seed=args.seed)
    with db.connection(url) as conn:
        t = time.perf_counter()
        conn.execute("VACUUM recsql.item_embeddings")
        out["vacuum_s"] = round(time.perf_counter() - t, 2)
        conn.execute("ANALYZE recsql.item_embeddings")
    log("hnsw on the fitted behaviour vectors after VACUUM")
    out["recall_after_vacuum"] = hnsw_recall(url, "behavior", efs, args.k, n=args.queries, seed=args.seed)

    log(f"fold-in: {args.fold_in_events:,} more events, then the worker drains the behaviour queue")
    with db.connection(url) as conn:
        out["fold_in_load"] = ingest(conn, list(chunks(stream, args.chunk, args.fold_in_events)), "load")
        queued_now = conn.execute("SELECT recsql.queue_behavior_refresh(1000000) AS n").fetchone()
        queued_before = queued(conn, "behavior")
        progress = Progress("fold-in", queued_before)
        worker = Embedder(url, spaces=("behavior",), on_batch=progress)
        started = time.perf_counter()
        written = 0
        while True:  # a round takes a few batches of the behaviour queue: rounds until one finds none
            claimed = progress.items
            written += worker.round(conn)
            if progress.items == claimed:
                break
        wall = time.perf_counter() - started
        total = progress.items
    out["fold_in"] = {
        "queued": queued_before,
        "claimed": total,
        "newly_queued": queued_now["n"] if queued_now else None,
        "written": written,
        "seconds": round(wall, 2),
        "items_per_s": round(total / wall, 1) if wall else 0,
        "written_per_s": round(written / wall, 1) if wall else 0,
    }
    log(
        f"  fold-in: {total:,} items claimed ({written:,} written) in {wall:.1f} s, {total / max(wall, 1e-9):,.0f} items/s"
    )
    return out


# --- freshness ------------------------------------------------------------------------------------


def freshness_phase(url: str, args: argparse.Namespace, encoder: text.TextEncoder) -> dict[str, Any]:
    """Commit -> text vector visible, with an idle Embedder thread that only NOTIFY wakes."""
    worker = Embedder(url, encoder=encoder, idle_s=3600)
    rng = random.Random(args.seed)
    latencies: list[float] = []
    missing = 0
    with db.connection(url) as writer, db.connection(url) as poller:
        for space in DIMS:
            if queued(writer, space):
                log(f"  draining {queued(writer, space):,} queued {space} items first")
        worker.start_thread()
        try:
            deadline = time.monotonic() + 600
            while (queued(writer, "text") or queued(writer, "behavior")) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2.0)  # idle: waiting on LISTEN
            for n in range(args.fresh_items):
                time.sleep(rng.uniform(0.05, 1.0))
                row = writer.execute(
                    "INSERT INTO recsql.items (item_id, title, category, properties) VALUES (%s, %s, %s, %s)"
                    " RETURNING item_key",
                    (
                        f"fresh-{n}",
                        f"Fresh {rng.choice(_COLORS)} item {n}",
                        "fresh",
                        Jsonb({"description": description(rng)}),
                    ),
                ).fetchone()
                committed = time.perf_counter()
                key = row["item_key"] if row else None
                while True:
                    seen = poller.execute(
                        "SELECT 1 FROM recsql.item_embeddings WHERE space = 'text' AND item_key = %s", (key,)
                    ).fetchone()
                    waited = time.perf_counter() - committed
                    if seen or waited > 30:
                        break
                    time.sleep(0.005)
                if seen:
                    latencies.append(waited * 1000)
                else:
                    missing += 1
                if (n + 1) % 20 == 0:
                    log(f"  freshness: {n + 1}/{args.fresh_items}, last {waited * 1000:.0f} ms")
        finally:
            worker.stop()
    p = benchdb.percentiles(latencies)
    return {"items": args.fresh_items, "missing_after_30s": missing, "ms": p}


# --- ingest with and without the worker ----------------------------------------------------------


class CatalogFeed:
    """Edits ``rate`` item descriptions per second (in 5 commits a second) so the text space has work."""

    def __init__(self, url: str, item_ids: list[str], rate: float, seed: int) -> None:
        self.url, self.item_ids, self.rate = url, item_ids, rate
        self.rng = random.Random(seed)
        self.edited = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CatalogFeed:
        if self.rate > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        per_tick = max(1, round(self.rate / 5))
        with db.connection(self.url) as conn:
            while not self._stop.wait(per_tick / self.rate):
                ids = self.rng.sample(self.item_ids, per_tick)
                descs = [description(self.rng) for _ in ids]
                conn.execute(
                    "UPDATE recsql.items i SET properties = i.properties || jsonb_build_object('description', d.d)"
                    " FROM unnest(%s::text[], %s::text[]) AS d(id, d) WHERE i.item_id = d.id",
                    (ids, descs),
                )
                self.edited += len(ids)


class FreshnessProbe:
    """Inserts an item every ``every`` seconds and records when each one's text vector appears."""

    def __init__(self, url: str, every: float = 1.0, seed: int = 0) -> None:
        self.url, self.every = url, every
        self.rng = random.Random(seed)
        self.sent = 0
        self.latencies_ms: list[float] = []
        self.pending: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FreshnessProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with db.connection(self.url) as conn:
            next_at = time.perf_counter()
            while not self._stop.is_set():
                if time.perf_counter() >= next_at:
                    row = conn.execute(
                        "INSERT INTO recsql.items (item_id, title, properties) VALUES (%s, %s, %s)"
                        " RETURNING item_key",
                        (
                            f"probe-{self.sent}",
                            f"Probe item {self.sent}",
                            Jsonb({"description": description(self.rng)}),
                        ),
                    ).fetchone()
                    if row:
                        self.pending[cast(int, row["item_key"])] = time.perf_counter()
                    self.sent += 1
                    next_at += self.every
                if self.pending:
                    seen = conn.execute(
                        "SELECT item_key FROM recsql.item_embeddings WHERE space = 'text' AND item_key = ANY(%s)",
                        (list(self.pending),),
                    ).fetchall()
                    now = time.perf_counter()
                    for r in seen:
                        self.latencies_ms.append((now - self.pending.pop(cast(int, r["item_key"]))) * 1000)
                self._stop.wait(0.02)

    def summary(self) -> dict[str, Any]:
        now = time.perf_counter()
        waiting = [(now - t) * 1000 for t in self.pending.values()]
        return {
            "probes": self.sent,
            "visible_ms": benchdb.percentiles(self.latencies_ms),
            "still_waiting": len(waiting),
            "oldest_waiting_ms": round(max(waiting, default=0.0), 1),
        }


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WorkerProcess:
    """`recsql worker --no-fold` (both spaces) on the bench database, in its own process group."""

    def __init__(self, url: str) -> None:
        env = {**os.environ, "RECSQL_DATABASE_URL": url}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recsql", "worker", "--no-fold"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, url: str, timeout: float = 180) -> float:
        """Insert a probe item and wait for its text vector: the model is loaded and the loop runs."""
        started = time.perf_counter()
        with db.connection(url) as conn:
            row = conn.execute(
                "INSERT INTO recsql.items (item_id, title) VALUES ('probe', 'A probe item') RETURNING item_key"
            ).fetchone()
            key = row["item_key"] if row else None
            while time.perf_counter() - started < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"recsql worker exited with status {self.proc.returncode}")
                if conn.execute(
                    "SELECT 1 FROM recsql.item_embeddings WHERE space = 'text' AND item_key = %s", (key,)
                ).fetchone():
                    return time.perf_counter() - started
                time.sleep(0.1)
        raise RuntimeError(f"recsql worker did not embed a probe item within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def written_since(conn: Conn, since: Any) -> dict[str, int]:
    rows = conn.execute(
        "SELECT space, count(*) AS n FROM recsql.item_embeddings WHERE updated_at >= %s GROUP BY space",
        (since,),
    ).fetchall()
    return {r["space"]: int(r["n"]) for r in rows}


def ingest_phase(
    url: str, args: argparse.Namespace, stream: Iterator[synth.Event], item_ids: list[str]
) -> dict[str, Any]:
    """Without the worker (half), with it (all), without again (half): events/s each way."""
    half = max(args.chunk, args.ingest_events // 2)
    first = list(chunks(stream, args.chunk, half))
    middle = list(chunks(stream, args.chunk, args.ingest_events))
    last = list(chunks(stream, args.chunk, half))
    out: dict[str, Any] = {"catalog_edits_per_s": args.catalog_rate}
    with db.connection(url) as conn:
        conn.execute("VACUUM ANALYZE")
        with CatalogFeed(url, item_ids, args.catalog_rate, args.seed) as feed:
            log("ingest without the worker (1/2)")
            out["without_1"] = ingest(conn, first, "without worker", refresh_each=True)
            out["edits_without_1"] = feed.edited
        log("starting recsql worker --no-fold (text and behaviour)")
        worker = WorkerProcess(url)
        try:
            out["worker_ready_s"] = round(worker.wait_ready(url), 1)
            backlog = {s: queued(conn, s) for s in DIMS}
            since = conn.execute("SELECT now() AS t").fetchone()
            cpu0 = cpu_seconds(worker.proc.pid)
            with (
                CatalogFeed(url, item_ids, args.catalog_rate, args.seed + 1) as feed,
                FreshnessProbe(url, seed=args.seed) as probe,
            ):
                log(f"ingest with the worker (queued at start: {backlog})")
                out["with"] = ingest(conn, middle, "with worker", refresh_each=True)
                out["edits_with"] = feed.edited
            out["freshness_during_ingest"] = probe.summary()
            out["worker_cpu_s"] = round(cpu_seconds(worker.proc.pid) - cpu0, 1)
            out["worker_wrote"] = written_since(conn, since["t"] if since else None)
            out["queued_at_start"] = backlog
            out["queued_at_end"] = {s: queued(conn, s) for s in DIMS}
        finally:
            worker.stop()
        with CatalogFeed(url, item_ids, args.catalog_rate, args.seed + 2) as feed:
            log("ingest without the worker (2/2)")
            out["without_2"] = ingest(conn, last, "without worker", refresh_each=True)
            out["edits_without_2"] = feed.edited
    without_events = out["without_1"]["events"] + out["without_2"]["events"]
    without_s = out["without_1"]["seconds"] + out["without_2"]["seconds"]
    out["without_events_per_s"] = round(without_events / without_s)
    out["with_events_per_s"] = out["with"]["events_per_s"]
    out["ratio"] = round(out["with_events_per_s"] / out["without_events_per_s"], 3)
    out["with_worker_cores"] = round(out["worker_cpu_s"] / out["with"]["seconds"], 2)
    return out


# --- main -----------------------------------------------------------------------------------------


def source_version() -> dict[str, Any]:
    """The commit measured, and whether sql/, migrations/ or recsql/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "sql", "migrations", "recsql"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head.stdout.strip(), "modified": dirty.stdout.split()[1::2]}


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=500, help="Query items per recall measurement.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--ef",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[40, 80, 160],
        help="hnsw.ef_search values.",
    )
    parser.add_argument(
        "--text-vectors",
        choices=("random", "encoder"),
        default="random",
        help="random: clustered random 384-d vectors; encoder: all-MiniLM-L6-v2 on every item's text"
        " (6-8 minutes more on 2 cores)",
    )
    parser.add_argument(
        "--text-items", type=int, default=2000, help="Items the text worker embeds for its throughput."
    )
    parser.add_argument("--events", type=int, default=200_000, help="Events the behaviour refit reads.")
    parser.add_argument(
        "--fold-in-events", type=int, default=50_000, help="Events after the fit, before fold-in."
    )
    parser.add_argument(
        "--ingest-events",
        type=int,
        default=200_000,
        help="Per side: with the worker, and without (two halves).",
    )
    parser.add_argument("--chunk", type=int, default=20_000, help="Events per COPY transaction and fold.")
    parser.add_argument(
        "--catalog-rate", type=float, default=20, help="Item descriptions edited per second during ingest."
    )
    parser.add_argument("--fresh-items", type=int, default=100)
    parser.add_argument("--phases", default="hnsw,throughput,freshness,ingest")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="embeddings.json", help="File name under bench/results/.")
    args = parser.parse_args()
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = phases - {"hnsw", "throughput", "freshness", "ingest"}
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}")
    missing_text = text.unavailable_reason()
    if missing_text and (args.text_vectors == "encoder" or "freshness" in phases):
        log(f"{missing_text}: text vectors are random and the freshness phase is skipped")
        args.text_vectors = "random"
        phases.discard("freshness")

    server = benchdb.server_url()
    url = benchdb.create_fresh(server, DATABASE)
    machine = benchdb.machine(url)
    log(benchdb.describe(machine))
    results: dict[str, Any] = {
        "machine": machine,
        "load_average_at_start": load_average(),
        **source_version(),
        "args": {**vars(args), "phases": sorted(phases)},
        "targets": TARGETS,
    }
    started = time.perf_counter()
    encoder = None
    if not missing_text:
        t = time.perf_counter()
        encoder = text.TextEncoder(threads=1)
        results["encoder_load_s"] = round(time.perf_counter() - t, 1)
    items = catalog(args.items, args.seed)
    n_users = max(10, (args.events + args.fold_in_events + 2 * args.ingest_events) // 20)
    stream = synth.events(
        n_users,
        args.items,
        n_events=args.events + args.fold_in_events + 2 * args.ingest_events + 4 * args.chunk,
        seed=args.seed,
    )
    with db.connection(url) as conn:
        t = time.perf_counter()
        load.upsert_items(conn, items)
        results["items_load_s"] = round(time.perf_counter() - t, 2)
    try:
        results["vectors"] = fill_vectors(url, items, args, encoder)
        if "hnsw" in phases:
            results["hnsw"] = hnsw_phase(url, args)
        if "throughput" in phases:
            results["throughput"] = throughput_phase(url, args, stream, encoder)
        if "freshness" in phases and encoder is not None:
            log(f"freshness: {args.fresh_items} items, one per commit")
            results["freshness"] = freshness_phase(url, args, encoder)
        if "ingest" in phases:
            results["ingest"] = ingest_phase(url, args, stream, [it["item_id"] for it in items])
    finally:
        results["wall_s"] = round(time.perf_counter() - started, 1)
        results["load_average_at_end"] = load_average()
        results["met"] = verdicts(results)
        path = benchdb.save(args.out, results)
        log(f"saved {path}")
    report(results)


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    met: dict[str, bool] = {}
    for space, s in r.get("hnsw", {}).get("spaces", {}).items():
        default = next((x for x in s["by_ef_search"] if x["ef_search"] == 40), None)
        if default:
            met[f"recall_{space}_ef40"] = default["recall"] >= TARGETS["recall_at_10"]
        met[f"recall_{space}_similar_items"] = s["similar_items"]["recall"] >= TARGETS["recall_at_10"]
    if "freshness" in r:
        met["freshness_p99"] = r["freshness"]["ms"].get("p99", 1e9) / 1000 < TARGETS["freshness_p99_s"]
    if "ingest" in r and "ratio" in r["ingest"]:
        met["ingest_ratio"] = r["ingest"]["ratio"] >= TARGETS["ingest_ratio"]
    return met


def report(r: dict[str, Any]) -> None:
    print(benchdb.describe(r["machine"]))
    print(
        f"load average at start {r['load_average_at_start']}, at end {r['load_average_at_end']}; wall {r['wall_s']:.0f} s"
    )
    v = r["vectors"]
    print(
        f"vectors: text {v['text_vectors']}, behaviour {v['behavior_vectors']}; HNSW index built after loading"
        f" in {v['text']['index_build_s']} s (text), {v['behavior']['index_build_s']} s (behaviour)"
    )
    h = r.get("hnsw")
    if h:
        k = r["args"]["k"]
        print(
            f"HNSW at {r['args']['items']:,} items, {r['args']['queries']} query items, k={k}"
            f" (client time over the local socket; SELECT 1 p50 {h['round_trip_ms']['p50']:.2f} ms)"
        )
        print(f"{'query':<44} {'recall':>7} {'strict':>7} {'p50 ms':>7} {'p99 ms':>7}")
        for space, s in h["spaces"].items():
            for x in s["by_ef_search"]:
                label = f"{space} index, ef_search={x['ef_search']}"
                print(
                    f"{label:<44} {x['recall']:>7.4f} {x['recall_strict']:>7.4f} {x['ms']['p50']:>7.2f} {x['ms']['p99']:>7.2f}"
                )
            x = s["similar_items"]
            print(
                f"{space + ' similar_items(embedding), this space':<44} {x['recall']:>7.4f} {x['recall_strict']:>7.4f} {x['ms']['p50']:>7.2f} {x['ms']['p99']:>7.2f}"
            )
        x = h["similar_items_blend"]
        print(
            f"{'similar_items(embedding), both spaces':<44} {x['recall']:>7.4f} {x['recall_strict']:>7.4f} {x['ms']['p50']:>7.2f} {x['ms']['p99']:>7.2f}"
        )
    t = r.get("throughput")
    if t:
        if "text" in t:
            print(f"text worker: {t['text']['embedded']:,} items, {t['text']['items_per_s']} items/s")
        for name in ("refit_first", "refit_second"):
            x = t[name]
            print(
                f"behaviour {name.replace('_', ' ')}: {x['items']:,} items from {x['pairs']:,} pairs in {x['seconds']} s = {x['items_per_s']} items/s"
            )
        for name in ("recall_after_refit", "recall_after_vacuum"):
            x = t[name]
            print(
                f"  HNSW on fitted vectors ({x['items']:,}) {name.replace('_', ' ')}: "
                + ", ".join(
                    f"ef {e['ef_search']} {e['recall']:.4f} (short {e['short_results']})"
                    for e in x["by_ef_search"]
                )
            )
        f = t["fold_in"]
        print(
            f"behaviour fold-in: {f['claimed']:,} items claimed ({f['written']:,} written) in {f['seconds']} s = {f['items_per_s']} items/s"
        )
    f = r.get("freshness")
    if f:
        print(
            f"freshness (commit -> text vector): p50 {f['ms']['p50']:.0f} ms, p99 {f['ms']['p99']:.0f} ms,"
            f" max {f['ms']['max']:.0f} ms over {f['ms']['n']} items; target p99 < 2000 ms"
        )
    g = r.get("ingest")
    if g and "ratio" in g:
        print(
            f"ingest (COPY + recsql.flush() per {r['args']['chunk']:,} events, {g['catalog_edits_per_s']:g}"
            f" description edits/s): without worker {g['without_events_per_s']:,}/s,"
            f" with {g['with_events_per_s']:,}/s, ratio {g['ratio']} (target >= 0.8)"
        )
        f = g["freshness_during_ingest"]
        print(
            f"  worker: {g['with_worker_cores']} cores, wrote {g['worker_wrote']}, queued at the end"
            f" {g['queued_at_end']}; text freshness meanwhile: p50 {f['visible_ms'].get('p50', 0):.0f} ms,"
            f" p99 {f['visible_ms'].get('p99', 0):.0f} ms over {f['visible_ms'].get('n', 0)} probes,"
            f" {f['still_waiting']} still waiting (oldest {f['oldest_waiting_ms'] / 1000:.1f} s)"
        )
    print("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["met"].items()))


if __name__ == "__main__":
    main()
