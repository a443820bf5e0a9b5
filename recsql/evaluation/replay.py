"""An isolated state for evaluation: a scratch database on the same server, built from the
training events alone, that the live database never sees and that is dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from recsql import api, migrate
from recsql.errors import BadInput, DatabaseUnavailable, translate
from recsql.progress import Progress

USER_CHUNK = 500
# Training events per COPY and fold: the replay reports progress, and folds as a worker would.
EVENT_CHUNK = 100_000


@contextmanager
def scratch_database(source_url: str, prototypes: Sequence[str] = ()) -> Iterator[str]:
    """Create an empty, migrated database beside the source one; drop it afterwards.

    ``prototypes`` are SQL texts run after migrating (changed functions to measure before they
    become a migration); an error in one names it and drops the database.
    """
    name = f"recsql_eval_{uuid.uuid4().hex[:12]}"
    admin_url = make_conninfo(source_url, dbname="postgres")
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.InsufficientPrivilege as exc:
        user = conninfo_to_dict(source_url).get("user", "this role")
        raise DatabaseUnavailable(
            f"evaluation replays the training events into a scratch database, and {user} may not create one:"
            " GRANT it CREATEDB, or run the evaluation with a role that has it"
        ) from exc
    url = make_conninfo(source_url, dbname=name)
    try:
        migrate.upgrade(url)
        if prototypes:
            with psycopg.connect(url, autocommit=True) as conn:
                for n, text in enumerate(prototypes, 1):
                    try:
                        conn.execute(text.encode())
                    except psycopg.Error as exc:
                        raise BadInput(f"prototype SQL #{n} failed in the scratch database: {exc}") from exc
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def copy_catalog(source: psycopg.Connection[Any], target: psycopg.Connection[Any]) -> int:
    """Items (for filters and display, with the time each was added: new items are treated apart) and
    text vectors (they depend on titles, not on events)."""
    n = 0
    with (
        source.cursor().copy(
            "COPY (SELECT item_id, title, category, price, in_stock, properties, hidden_at, created_at"
            " FROM recsql.items ORDER BY item_key) TO STDOUT"
        ) as out,
        target.cursor().copy(
            "COPY recsql.items (item_id, title, category, price, in_stock, properties, hidden_at, created_at)"
            " FROM STDIN"
        ) as into,
    ):
        for block in out:
            into.write(block)
            n += 1
    target.execute("DELETE FROM recsql.embedding_queue")  # the copied text vectors follow
    with source.cursor().copy(
        "COPY (SELECT i.item_id, e.embedding::text, e.source_hash, e.model_version FROM recsql.item_embeddings e"
        " JOIN recsql.items i USING (item_key) WHERE e.space = 'text') TO STDOUT"
    ) as out:
        rows = list(out.rows())
    if rows:
        target.execute(
            "INSERT INTO recsql.item_embeddings (space, item_key, embedding, source_hash, model_version)"
            " SELECT 'text', i.item_key, x.v::vector, x.h, x.m"
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS x(id, v, h, m)"
            " JOIN recsql.items i ON i.item_id = x.id",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]),
        )
    return n


def load_events(
    target: psycopg.Connection[Any],
    train: pd.DataFrame,
    *,
    label: str = "replaying training events",
    show_progress: bool = True,
    chunk: int = EVENT_CHUNK,
) -> int:
    """COPY the training events in replay order and fold them, ``chunk`` events per transaction
    (with a progress line and ETA); each keeps its id and time. Neighbour lists are left for the
    caller's flush."""
    columns = ["event_id", "user_id", "item_id", "event_type", "value", "ts"]
    done = [0]
    progress = Progress(
        label, enabled=show_progress, total=len(train), position=lambda: done[0], unit="events"
    )
    try:
        for start in range(0, len(train), chunk):
            with target.cursor().copy(
                "COPY recsql.events (event_id, user_id, item_id, event_type, value, ts) FROM STDIN"
            ) as copy:
                for row in train[columns].iloc[start : start + chunk].itertuples(index=False, name=None):
                    value = row[4]
                    copy.write_row((*row[:4], None if pd.isna(value) else value, row[5]))
            api.fold(target)
            done[0] = min(start + chunk, len(train))
            progress.update(done[0])
    except psycopg.Error as exc:
        raise translate(exc) from exc
    progress.done(done[0])
    return done[0]


def apply_params(conn: psycopg.Connection[Any], params: dict[str, Any]) -> str:
    """Put a model's parameters in force (rebuilding state they shape); 'applied' or 'rebuilt'."""
    row = conn.execute("SELECT recsql.apply_params(%s) AS how", (Jsonb(params),)).fetchone()
    return str(row["how"]) if row else "applied"


def recommend_all(
    conn: psycopg.Connection[Any],
    users: Sequence[str],
    k: int,
    *,
    label: str = "asking for top-k",
    show_progress: bool = True,
) -> pd.DataFrame:
    """recommend(user, k, exclude_seen => true) for every user, in chunks; (user_id, item_id, rank)."""
    out: list[tuple[str, str, int]] = []
    done = [0]
    progress = Progress(
        label, enabled=show_progress, total=len(users), position=lambda: done[0], unit="users"
    )
    for start in range(0, len(users), USER_CHUNK):
        chunk = list(users[start : start + USER_CHUNK])
        rows = conn.execute(
            "SELECT u.user_id, r.item_id, r.rank::int AS rank FROM unnest(%s::text[]) AS u(user_id)"
            " CROSS JOIN LATERAL recsql.recommend(u.user_id, %s, exclude_seen => true)"
            " WITH ORDINALITY AS r(item_id, score, reason, rank)",
            (chunk, k),
        ).fetchall()
        out.extend((r["user_id"], r["item_id"], r["rank"]) for r in rows)
        done[0] = min(start + USER_CHUNK, len(users))
        progress.update(done[0])
    progress.done(len(users))
    return pd.DataFrame(out, columns=["user_id", "item_id", "rank"])
