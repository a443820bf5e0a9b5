"""Reading and writing embedding state: spaces, the work queue (claimed with SKIP LOCKED), vectors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[Any]
Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Space:
    name: str
    dim: int
    enabled: bool
    fitted_at: Any
    fit_meta: dict[str, Any]
    model_version: str | None


def space(conn: Conn, name: str) -> Space | None:
    row = conn.execute(
        "SELECT name, dim, enabled, fitted_at, fit_meta, model_version FROM recsql.embedding_spaces WHERE name = %s",
        (name,),
    ).fetchone()
    return Space(**row) if row else None


def vector_text(v: Sequence[float] | npt.NDArray[Any]) -> str:
    """pgvector's text form."""
    return "[" + ",".join(f"{float(x):.7g}" for x in v) + "]"


def parse_vector(text: str) -> Vectors:
    return np.array([float(x) for x in text.strip("[]").split(",")], dtype=np.float32)


def claim(conn: Conn, space_name: str, limit: int) -> list[dict[str, Any]]:
    """Lock up to ``limit`` queued items of a space that no other worker holds (call inside a transaction)."""
    return list(
        conn.execute(
            "SELECT q.item_key, i.title, i.category, i.properties, e.source_hash"
            " FROM recsql.embedding_queue q"
            " JOIN recsql.items i ON i.item_key = q.item_key"
            " LEFT JOIN recsql.item_embeddings e ON e.space = q.space AND e.item_key = q.item_key"
            " WHERE q.space = %s ORDER BY q.queued_at, q.item_key LIMIT %s FOR UPDATE OF q SKIP LOCKED",
            (space_name, limit),
        ).fetchall()
    )


def done(conn: Conn, space_name: str, item_keys: Sequence[int]) -> None:
    conn.execute(
        "DELETE FROM recsql.embedding_queue WHERE space = %s AND item_key = ANY(%s)",
        (space_name, list(item_keys)),
    )


def write(
    conn: Conn,
    space_name: str,
    item_keys: Sequence[int],
    vectors: Vectors,
    *,
    model_version: str | None,
    source_hashes: Sequence[str | None] | None = None,
    supports: Sequence[int | None] | None = None,
    pair_totals: Sequence[int | None] | None = None,
) -> None:
    """Upsert vectors; ``writes`` counts how often each item's vector was written."""
    n = len(item_keys)
    conn.execute(
        "INSERT INTO recsql.item_embeddings AS e"
        " (space, item_key, embedding, source_hash, support, pair_total, model_version)"
        " SELECT %s, k, v::vector, h, s, t, %s"
        " FROM unnest(%s::integer[], %s::text[], %s::text[], %s::bigint[], %s::bigint[]) AS x(k, v, h, s, t)"
        " ON CONFLICT (space, item_key) DO UPDATE SET embedding = excluded.embedding,"
        " source_hash = excluded.source_hash, support = excluded.support, pair_total = excluded.pair_total,"
        " model_version = excluded.model_version, writes = e.writes + 1, updated_at = now()",
        (
            space_name,
            model_version,
            list(item_keys),
            [vector_text(v) for v in vectors],
            list(source_hashes) if source_hashes is not None else [None] * n,
            list(supports) if supports is not None else [None] * n,
            list(pair_totals) if pair_totals is not None else [None] * n,
        ),
    )


def delete(conn: Conn, space_name: str, item_keys: Sequence[int]) -> None:
    if item_keys:
        conn.execute(
            "DELETE FROM recsql.item_embeddings WHERE space = %s AND item_key = ANY(%s)",
            (space_name, list(item_keys)),
        )


def pairs(conn: Conn) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Every co-occurrence pair in both directions (stored once) as three arrays, streamed with COPY."""
    a: list[int] = []
    b: list[int] = []
    n: list[int] = []
    with conn.cursor().copy(
        "COPY (SELECT item_key, partner, n FROM recsql.item_pair_sides WHERE kind = 'v') TO STDOUT"
    ) as cp:
        for row in cp.rows():
            a.append(int(row[0]))
            b.append(int(row[1]))
            n.append(int(row[2]))
    return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(n, dtype=np.int64)


def replace_space(
    conn: Conn,
    space_name: str,
    item_keys: npt.NDArray[np.int64],
    vectors: Vectors,
    pair_totals: npt.NDArray[np.int64],
    meta: dict[str, Any],
    model_version: str,
) -> None:
    """Swap a whole space for a fresh fit in one transaction (readers see the old or the new fit)."""
    with conn.transaction():
        # Support goes in with the COPY: a later UPDATE would write every vector into the index again.
        supports = {
            int(r["item_key"]): r["n_events"]
            for r in conn.execute("SELECT item_key, n_events FROM recsql.item_stats").fetchall()
        }
        conn.execute("DELETE FROM recsql.item_embeddings WHERE space = %s", (space_name,))
        with conn.cursor().copy(
            "COPY recsql.item_embeddings (space, item_key, embedding, support, pair_total, model_version) FROM STDIN"
        ) as cp:
            for key, vec, total in zip(item_keys.tolist(), vectors, pair_totals.tolist(), strict=True):
                cp.write_row((space_name, key, vector_text(vec), supports.get(key), total, model_version))
        conn.execute(
            "UPDATE recsql.embedding_spaces SET fit_meta = %s, fitted_at = now(), model_version = %s,"
            " updated_at = now() WHERE name = %s",
            (Jsonb(meta), model_version, space_name),
        )
        conn.execute("DELETE FROM recsql.embedding_queue WHERE space = %s", (space_name,))


def queue_lag(conn: Conn) -> list[dict[str, Any]]:
    """Per space: queued items and the age of the oldest, in seconds."""
    return list(
        conn.execute(
            "SELECT sp.name AS space, count(q.item_key) AS queued,"
            " coalesce(extract(epoch FROM now() - min(q.queued_at)), 0)::float8 AS oldest_s"
            " FROM recsql.embedding_spaces sp LEFT JOIN recsql.embedding_queue q ON q.space = sp.name"
            " GROUP BY sp.name ORDER BY sp.name"
        ).fetchall()
    )
