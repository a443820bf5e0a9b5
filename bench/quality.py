"""Offline quality of recsql against standard baselines on MovieLens-100k, through `recsql evaluate`'s code.

Protocol: the ratings are loaded as 'rating' events (value = the rating), in timestamp order, into
a bench database with the catalog (title, first genre, "Genres: ..., released YEAR") and its text
vectors (all-MiniLM-L6-v2). Then recsql.evaluation does what `recsql evaluate --holdout-last 0.2`
does: each user's last 20% of ratings (ceil, by time then arrival) are the test; the rest is
replayed into a scratch database, folded, behaviour vectors refitted on it alone; every test user
gets recommend(user, 10, exclude_seen => true) from each recsql parameter set. Baselines (most
popular, implicit's item-item cosine and BM25, implicit ALS, EASE) are trained on the same
training events with seen items excluded, and every list is scored by recsql.evaluation.metrics
(HR, NDCG, recall, coverage @10; ratings all have gain 1, so NDCG is binary).

recsql rows: the default model as `recsql evaluate` sees it (hybrid, embedding_weight 0.2), the same
with co-occurrence only, and the tuned settings (TUNED) at embedding_weight 0 (co-occurrence), 1
(embedding only, and each space alone) and each of --weights (hybrid, the weight picked on a
validation split: the last 20% of each user's training events). Settings were chosen with --sweep
on that validation split. Cold start (unless --no-cold-start): 10% of the items, drawn with a seed,
lose every training event (they keep their titles and text vectors); only test interactions with
them count (recall@10 on cold items) for recsql at each weight, most-popular, and random lists.

    RECSQL_HOME=/tmp/rh-quality python bench/quality.py [--sweep] [--split test|validation]
    python bench/quality.py --prototype bench/prototypes/cold.sql --output /tmp/q.json
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from scipy import sparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from recsql import db, load, migrate  # noqa: E402
from recsql.evaluation import metrics, run, split  # noqa: E402

DATA_DIR = Path("/work/shared/datasets/ml-100k")
RESULTS = ROOT / "bench" / "results" / "quality.json"
SWEEP_RESULTS = RESULTS.with_name("quality-sweep.json")
DATABASE = "recsql_quality"
K = 10
HOLDOUT = 0.2
EMBEDDING_WEIGHTS = (0.1, 0.2, 0.3, 0.5)
COLD_FRACTION = 0.1
COLD_SEED = 7
RANDOM_DRAWS = 20

# The settings this benchmark recommends, from the top plateau of NDCG@10 on the validation split
# (--sweep): neighbors_per_item 500 scores 0.001 more there but makes every list 2.5 times longer.
TUNED: dict[str, Any] = {
    "cooc_window": 20,
    "history_length": 15,
    "history_half_life": 5.0,
    "similarity": "cosine",
    "neighbors_per_item": 200,
    "min_support": 2,
}

# --- data -----------------------------------------------------------------------------------------


def load_interactions(data_dir: Path) -> pd.DataFrame:
    """ml-100k.inter as events (event_id, user_id, item_id, event_type, value, ts) in replay order."""
    df = pd.read_csv(data_dir / "ml-100k.inter", sep="\t")
    df.columns = pd.Index(["user", "item", "rating", "ts"])
    df = df.sort_values(["ts", "user", "item"], kind="mergesort").reset_index(drop=True)
    return pd.DataFrame(
        {
            "event_id": "ml-" + df["user"].astype(str) + "-" + df["item"].astype(str),
            "user_id": df["user"].astype(str),
            "item_id": df["item"].astype(str),
            "event_type": "rating",
            "value": df["rating"].astype(float),
            "ts": pd.to_datetime(df["ts"], unit="s", utc=True),
        }
    )


def load_catalog(data_dir: Path) -> list[dict[str, Any]]:
    """ml-100k.item as catalog rows: title, the first listed genre as category, and a description
    naming every genre and the year (the text the text space embeds)."""
    df = pd.read_csv(data_dir / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    df.columns = pd.Index(["item", "title", "year", "genres"])
    rows = []
    for item, title, year, genres in df.itertuples(index=False, name=None):
        parts = ([f"Genres: {', '.join(genres.split(' '))}."] if genres else []) + (
            [f"Released {year}."] if year else []
        )
        category = genres.split(" ")[0] if genres else None
        rows.append(
            {
                "item_id": item,
                "title": title,
                "category": category,
                "properties": {"description": " ".join(parts)},
                "released": int(year) if year.isdigit() else None,
            }
        )
    return rows


def date_catalog(conn: psycopg.Connection[Any], catalog: list[dict[str, Any]], events: pd.DataFrame) -> None:
    """Items entered the catalog when the film came out (January 1st of its year; the first rating's
    day when the year is missing): none of them is new today, as in a shop's long-standing catalog.
    The cold-start check then marks its held-out items as just added."""
    first = events["ts"].min().to_pydatetime()
    dated = [
        (it["item_id"], datetime(it["released"], 1, 1, tzinfo=UTC) if it.get("released") else first)
        for it in catalog
    ]
    conn.execute(
        "UPDATE recsql.items i SET created_at = x.created_at"
        " FROM unnest(%s::text[], %s::timestamptz[]) AS x(item_id, created_at) WHERE i.item_id = x.item_id",
        ([d[0] for d in dated], [d[1] for d in dated]),
    )


@contextmanager
def added_now(url: str, items: frozenset[str]) -> Iterator[None]:
    """The given items count as just added to the catalog (created_at = now()) for the block."""
    with db.connection(url) as conn:
        before = conn.execute(
            "SELECT item_id, created_at FROM recsql.items WHERE item_id = ANY(%s)", (sorted(items),)
        ).fetchall()
        conn.execute("UPDATE recsql.items SET created_at = now() WHERE item_id = ANY(%s)", (sorted(items),))
    try:
        yield
    finally:
        with db.connection(url) as conn:
            conn.execute(
                "UPDATE recsql.items i SET created_at = x.created_at"
                " FROM unnest(%s::text[], %s::timestamptz[]) AS x(item_id, created_at) WHERE i.item_id = x.item_id",
                ([r["item_id"] for r in before], [r["created_at"] for r in before]),
            )


def fresh_database(server_url: str, name: str, prototypes: Sequence[str] = ()) -> str:
    """Drop and recreate database ``name``, migrate it to head, run the prototypes; return its URL."""
    with psycopg.connect(make_conninfo(server_url, dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for text in prototypes:
            conn.execute(text.encode())
    return url


@functools.cache
def text_encoder() -> Any:
    """all-MiniLM-L6-v2, loaded once per run; None (and a warning) without the text extra."""
    from recsql.embeddings import text

    reason = text.unavailable_reason()
    if reason is not None:
        print(f"warning: {reason}; only the behaviour space is filled", flush=True)
        return None
    return text.TextEncoder(threads=1)


def build_source(
    server_url: str,
    events: pd.DataFrame,
    catalog: list[dict[str, Any]],
    prototypes: Sequence[str] = (),
    name: str = DATABASE,
) -> tuple[str, dict[str, Any]]:
    """The database `recsql evaluate` reads: catalog with text vectors, and the event log (unfolded)."""
    from recsql.embeddings.worker import Embedder

    started = time.perf_counter()
    url = fresh_database(server_url, name, prototypes)
    info: dict[str, Any] = {}
    with db.connection(url) as conn:
        info["items"] = load.upsert_items(conn, catalog)
        date_catalog(conn, catalog, events)
        columns = ["user_id", "item_id", "event_type", "ts", "value", "event_id"]
        info["events"] = load.copy_events(
            conn, ((*row, None) for row in events[columns].itertuples(index=False, name=None))
        )
        encoder = text_encoder()
        if encoder is not None:
            t0 = time.perf_counter()
            info["text_items"] = Embedder(url, spaces=("text",), encoder=encoder).round(conn)
            info["text_seconds"] = round(time.perf_counter() - t0, 1)
    info["seconds"] = round(time.perf_counter() - started, 1)
    print(f"source database {name}: {info}", flush=True)
    return url, info


# --- baselines ------------------------------------------------------------------------------------


@dataclass
class Matrix:
    """The training events as a user x item CSR matrix with id maps."""

    binary: sparse.csr_matrix
    rating: sparse.csr_matrix
    users: np.ndarray
    items: np.ndarray

    def rows(self, users: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Matrix rows of the users present in training (the others get no list)."""
        known = [u for u in users if u in self._index]
        return np.array([self._index[u] for u in known], dtype=np.int64), known

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {u: n for n, u in enumerate(self.users)}

    def x(self, weights: str) -> sparse.csr_matrix:
        return (self.rating if weights == "rating" else self.binary).tocsr()

    def top(self, scores: np.ndarray, rows: np.ndarray, users: list[str], k: int) -> pd.DataFrame:
        """Top-k items per user from dense scores, leaving out each user's training items."""
        scores = scores.astype(np.float64, copy=True)
        scores[self.binary[rows].nonzero()] = -np.inf
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        best = np.take_along_axis(part, order, axis=1)
        return _frame(users, best, self.items)


def _frame(users: list[str], best: np.ndarray, items: np.ndarray) -> pd.DataFrame:
    out = [
        (u, str(items[i]), r)
        for u, row in zip(users, best, strict=True)
        for r, i in enumerate(row, 1)
        if i >= 0
    ]
    return pd.DataFrame(out, columns=metrics.LIST_COLUMNS)


_MATRICES: dict[int, tuple[pd.DataFrame, Matrix]] = {}


def matrix(train: pd.DataFrame) -> Matrix:
    """The matrix of one training frame, built once (the frame is kept, so its id stays its own)."""
    cached = _MATRICES.get(id(train))
    if cached is not None and cached[0] is train:
        return cached[1]
    users = np.sort(train["user_id"].unique())
    items = np.sort(train["item_id"].unique())
    rows = np.searchsorted(users, train["user_id"].to_numpy())
    cols = np.searchsorted(items, train["item_id"].to_numpy())
    shape = (len(users), len(items))
    ones = np.ones(len(train), dtype=np.float32)
    value = train["value"].fillna(1.0).to_numpy(dtype=np.float32)
    m = Matrix(
        sparse.csr_matrix((ones, (rows, cols)), shape=shape),
        sparse.csr_matrix((value, (rows, cols)), shape=shape),
        users,
        items,
    )
    _MATRICES[id(train)] = (train, m)
    return m


def _quiet() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def ease(m: Matrix, rows: np.ndarray, users: list[str], k: int, params: dict[str, Any]) -> pd.DataFrame:
    """EASE (Steck 2019): B = I - P / diag(P), P = (X^T X + lambda I)^-1; scores X_u B."""
    x = m.x(params["weights"]).astype(np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += params["lambda"]
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return m.top(np.asarray(x[rows] @ b), rows, users, k)


def _implicit(
    model: Any, m: Matrix, rows: np.ndarray, users: list[str], k: int, weights: str
) -> pd.DataFrame:
    x = m.x(weights)
    model.fit(x, show_progress=False)
    ids, _ = model.recommend(rows, x[rows], N=k, filter_already_liked_items=True)
    return _frame(users, ids, m.items)


def item_knn(m: Matrix, rows: np.ndarray, users: list[str], k: int, params: dict[str, Any]) -> pd.DataFrame:
    """implicit's item-item CosineRecommender or BM25Recommender."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    model: Any
    if params["model"] == "bm25":
        model = BM25Recommender(
            K=params["K"], K1=params.get("K1", 1.2), B=params.get("B", 0.75), num_threads=1
        )
    else:
        model = CosineRecommender(K=params["K"], num_threads=1)
    return _implicit(model, m, rows, users, k, params["weights"])


def als(m: Matrix, rows: np.ndarray, users: list[str], k: int, params: dict[str, Any]) -> pd.DataFrame:
    """implicit's AlternatingLeastSquares with a fixed random_state."""
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=params["factors"],
        regularization=params["regularization"],
        alpha=params["alpha"],
        iterations=params.get("iterations", 15),
        random_state=42,
        num_threads=1,
    )
    return _implicit(model, m, rows, users, k, params["weights"])


BATCH: dict[str, Callable[[Matrix, np.ndarray, list[str], int, dict[str, Any]], pd.DataFrame]] = {
    "ease": ease,
    "itemknn": item_knn,
    "als": als,
}


def baseline(kind: str, params: dict[str, Any]) -> run.Lists:
    """A batch model as run.Lists: trained on the split's training events, top-k for the test users."""
    if kind == "popular":
        return run.popular_lists

    def lists(cut: split.Split, users: list[str], k: int) -> pd.DataFrame:
        m = matrix(cut.train)
        rows, known = m.rows(users)
        with _quiet(), warnings.catch_warnings():
            # implicit's item-item models convert their own intermediate matrices and warn about it.
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            return BATCH[kind](m, rows, known, k, params)

    return lists


# Best settings of each baseline on the validation split (see --sweep); binary vs rating-weighted
# input is one of the tuned choices. ALS's top few trade places between sweeps (the same settings
# vary by about 0.005 NDCG from run to run), so its choice here is the first sweep's.
BASELINE_DEFAULTS: list[tuple[str, str, dict[str, Any]]] = [
    ("most-popular", "popular", {}),
    ("implicit cosine item-item", "itemknn", {"model": "cosine", "weights": "rating", "K": 200}),
    ("implicit BM25 item-item", "itemknn", {"model": "bm25", "weights": "rating", "K": 100}),
    ("implicit ALS", "als", {"weights": "binary", "factors": 128, "regularization": 10.0, "alpha": 1.0}),
    ("EASE", "ease", {"weights": "rating", "lambda": 5000}),
]


def baseline_grid() -> list[tuple[str, str, dict[str, Any]]]:
    """Every baseline setting that --sweep tries on the validation split."""
    grid: list[tuple[str, str, dict[str, Any]]] = [("most-popular", "popular", {})]
    for weights in ("binary", "rating"):
        for k in (10, 20, 50, 100, 200, 400):
            grid.append(
                ("implicit cosine item-item", "itemknn", {"model": "cosine", "weights": weights, "K": k})
            )
            grid.append(("implicit BM25 item-item", "itemknn", {"model": "bm25", "weights": weights, "K": k}))
        for factors in (16, 32, 64, 128):
            for reg in (0.1, 1.0, 10.0):
                for alpha in (0.5, 1.0, 10.0):
                    params = {"weights": weights, "factors": factors, "regularization": reg, "alpha": alpha}
                    grid.append(("implicit ALS", "als", params))
        for lam in (50, 100, 200, 300, 500, 1000, 2000, 5000, 10000):
            grid.append(("EASE", "ease", {"weights": weights, "lambda": lam}))
    return grid


def recsql_grid() -> list[dict[str, Any]]:
    """recsql parameters tried by --sweep (co-occurrence only): per window, each knob varied around TUNED."""
    options: dict[str, tuple[Any, ...]] = {
        "history_half_life": (2.0, 3.0, 5.0, 10.0, 30.0),
        "history_length": (15, 30, 50),
        "similarity": ("cosine", "jaccard", "count"),
        "neighbors_per_item": (20, 50, 100, 200, 500),
        "min_support": (1, 2, 3, 5),
    }
    grid: list[dict[str, Any]] = []
    for window in (5, 10, 20, 50, 200):
        base = dict(TUNED, cooc_window=window, embedding_weight=0.0)
        grid.append(base)
        grid += [dict(base, history_length=n, history_half_life=1e6) for n in (10, 30, 100)]
        for name, values in options.items():
            grid += [dict(base, **{name: v}) for v in values if v != base[name]]
    return grid


# --- recsql parameter sets ------------------------------------------------------------------------


def with_weight(params: dict[str, Any], weight: float) -> dict[str, Any]:
    return dict(params, embedding_weight=weight)


def weight_candidates(params: dict[str, Any], weights: Sequence[float], prefix: str) -> list[run.Candidate]:
    """recommend() at embedding_weight 0 (co-occurrence), 1 (embedding only) and each hybrid weight."""
    return [
        run.Candidate(f"{prefix}co-occurrence (w=0)", with_weight(params, 0.0)),
        run.Candidate(f"{prefix}embedding (w=1)", with_weight(params, 1.0)),
    ] + [run.Candidate(f"{prefix}hybrid (w={w:g})", with_weight(params, w)) for w in weights]


def only_space(space: str) -> Callable[[psycopg.Connection[Any]], Any]:
    """A scratch change: every embedding space but ``space`` weighs 0, restored afterwards."""

    @contextmanager
    def around(scratch: psycopg.Connection[Any]) -> Iterator[None]:
        weights = {
            r["name"]: r["weight"]
            for r in scratch.execute("SELECT name, weight FROM recsql.embedding_spaces")
        }
        scratch.execute("UPDATE recsql.embedding_spaces SET weight = 0 WHERE name <> %s", (space,))
        try:
            yield
        finally:
            for name, weight in weights.items():
                scratch.execute(
                    "UPDATE recsql.embedding_spaces SET weight = %s WHERE name = %s", (weight, name)
                )

    return around


def only_items(items: frozenset[str]) -> Callable[[psycopg.Connection[Any]], Any]:
    """A scratch change: every item outside ``items`` hidden, shown again afterwards."""

    @contextmanager
    def around(scratch: psycopg.Connection[Any]) -> Iterator[None]:
        scratch.execute(
            "UPDATE recsql.items SET hidden_at = now() WHERE item_id <> ALL(%s)", (sorted(items),)
        )
        try:
            yield
        finally:
            scratch.execute("UPDATE recsql.items SET hidden_at = NULL")

    return around


# --- running --------------------------------------------------------------------------------------


@dataclass
class Bench:
    """The source database and what every evaluation here shares."""

    conn: psycopg.Connection[Any]
    url: str
    events: pd.DataFrame
    prototypes: Sequence[str]

    def cut(self, name: str) -> split.Split:
        """The test split (each user's last 20%) or the validation split (the last 20% of its training)."""
        cut = split.holdout_last(self.events, HOLDOUT)
        return split.holdout_last(cut.train, HOLDOUT) if name == "validation" else cut

    def run(
        self,
        cut: split.Split,
        candidates: Sequence[run.Candidate],
        external: dict[str, run.Lists],
        *,
        keep_lists: bool = False,
    ) -> tuple[run.Plan, run.Result]:
        the_plan = run.plan(self.conn, cut)
        result = run.run(
            self.conn,
            self.url,
            the_plan,
            candidates,
            external=external,
            prototypes=self.prototypes,
            ks=(K,),
            keep_lists=keep_lists,
        )
        print(table(result), flush=True)
        return the_plan, result


def row(result: run.Result, model: str) -> dict[str, Any]:
    values = {m: result.value(model, m, K) for m in metrics.METRICS}
    return {"model": model, **values, "seconds": round(result.seconds.get(model, 0.0), 2)}


HEADER = f"{'model':46s} {'HR@10':>7s} {'NDCG@10':>8s} {'Recall@10':>9s} {'coverage':>9s} {'seconds':>8s}"


def describe(r: dict[str, Any]) -> str:
    return (
        f"{r['model']:46s} {r['hr']:7.4f} {r['ndcg']:8.4f} {r['recall']:9.4f} {r['coverage']:9.3f}"
        f" {r.get('seconds', 0.0):8.1f}"
    )


def table(result: run.Result) -> str:
    models = list(dict.fromkeys(result.scores["model"]))
    lines = [
        f"{result.split}: {result.users} test users, replay {result.seconds.get('replay', 0):.1f}s",
        HEADER,
    ]
    return "\n".join(lines + [describe(row(result, m)) for m in models])


def ratio_interval(ours: np.ndarray, theirs: np.ndarray, resamples: int = 2000) -> tuple[float, float]:
    """95% paired-bootstrap interval (resampling users) of the ratio of mean per-user values."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(ours), size=(resamples, len(ours)))
    ratios = ours[picks].mean(axis=1) / theirs[picks].mean(axis=1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def compare(the_plan: run.Plan, result: run.Result, ours: str, others: Sequence[str]) -> dict[str, Any]:
    """NDCG@10 of ``ours`` over each of ``others``, with a paired-bootstrap 95% interval."""
    mine = metrics.per_user(result.lists[ours], the_plan.truth, K)["ndcg"].to_numpy()
    out: dict[str, Any] = {}
    for name in others:
        theirs = metrics.per_user(result.lists[name], the_plan.truth, K)["ndcg"].to_numpy()
        low, high = ratio_interval(mine, theirs)
        ratio = float(mine.mean() / theirs.mean())
        out[name] = {"ndcg_ratio": ratio, "ci95": [low, high]}
        print(f"{ours} NDCG / {name} = {ratio:.3f} (95% CI {low:.3f}-{high:.3f})", flush=True)
    return out


def sweep(bench: Bench) -> dict[str, Any]:
    """Every grid setting on the validation split; the best per model and every row."""
    cut = bench.cut("validation")
    grid = recsql_grid()
    candidates = [run.Candidate(f"recsql {n}", params) for n, params in enumerate(grid)]
    external = {
        f"{name} {json.dumps(params)}": baseline(kind, params) for name, kind, params in baseline_grid()
    }
    _, result = bench.run(cut, candidates, external)
    rows = [row(result, c.name) | {"family": "recsql", "params": c.params} for c in candidates] + [
        row(result, f"{name} {json.dumps(params)}") | {"family": name, "params": params}
        for name, _, params in baseline_grid()
    ]
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["family"] not in best or r["ndcg"] > best[r["family"]]["ndcg"]:
            best[r["family"]] = r
    print("\nBest on the validation split:\n" + HEADER)
    for r in best.values():
        print(describe(r), " ", json.dumps(r["params"]))
    return {"best": best, "rows": rows}


def main_table(
    bench: Bench,
    split_name: str,
    tuned: dict[str, Any],
    baselines: Sequence[tuple[str, str, dict[str, Any]]],
    weights: Sequence[float],
) -> tuple[run.Plan, run.Result]:
    """The default model, the tuned settings at each embedding weight, and every baseline on one split."""
    default_name, default = run.active_model(bench.conn)
    candidates = [
        run.Candidate(f"recsql {default_name} model", default),
        run.Candidate(f"recsql {default_name} model, co-occurrence only", with_weight(default, 0.0)),
        *weight_candidates(tuned, weights, "recsql tuned, "),
    ]
    spaces = [r["name"] for r in bench.conn.execute("SELECT name FROM recsql.embedding_spaces ORDER BY name")]
    candidates += [
        run.Candidate(f"recsql tuned, embedding, {space} only", with_weight(tuned, 1.0), only_space(space))
        for space in spaces
    ]
    external = {name: baseline(kind, params) for name, kind, params in baselines}
    return bench.run(bench.cut(split_name), candidates, external, keep_lists=True)


def pick_weight(
    bench: Bench, tuned: dict[str, Any], weights: Sequence[float]
) -> tuple[float, list[dict[str, Any]]]:
    """The hybrid embedding_weight with the best NDCG@10 on the validation split, and every row."""
    candidates = weight_candidates(tuned, weights, "recsql tuned, ")
    _, result = bench.run(bench.cut("validation"), candidates, {})
    rows = [row(result, c.name) | {"embedding_weight": c.params["embedding_weight"]} for c in candidates]
    hybrid = [r for r in rows if "hybrid" in r["model"]]
    return float(max(hybrid, key=lambda r: r["ndcg"])["embedding_weight"]), rows


def random_lists(
    candidates: np.ndarray, seen: pd.Series, lengths: dict[str, int] | None, rng: np.random.Generator
) -> run.Lists:
    """K (or ``lengths[user]``) random candidates per user, none the user had in training."""

    def lists(cut: split.Split, users: list[str], k: int) -> pd.DataFrame:
        out = []
        for user in users:
            mine = seen.get(user, set())
            n = k if lengths is None else lengths.get(user, 0)
            pool = rng.permutation(candidates)[: n + len(mine)]
            picks = [i for i in pool if i not in mine][:n]
            out += [(user, str(item), r) for r, item in enumerate(picks, 1)]
        return pd.DataFrame(out, columns=metrics.LIST_COLUMNS)

    return lists


def cold_start(
    bench: Bench, split_name: str, tuned: dict[str, Any], weights: Sequence[float]
) -> dict[str, Any]:
    """Recall@10 on items with no training events at all, for users whose test items include them."""
    cold = split.cold_items(bench.events, COLD_FRACTION, COLD_SEED)
    cut = split.hold_out_items(bench.cut(split_name), cold)
    hidden = "recsql tuned, hybrid (w=0.2), warm items hidden"
    candidates = [
        *weight_candidates(tuned, weights, "recsql tuned, "),
        run.Candidate(hidden, with_weight(tuned, 0.2), only_items(cold)),
    ]
    print(
        f"\nCold start: {len(cold)} items ({COLD_FRACTION:.0%}, seed {COLD_SEED}) without training events",
        flush=True,
    )
    # The held-out items are the shop's new products: added just now, nothing known about them but
    # their text (every other item was added long ago, see date_catalog).
    with added_now(bench.url, cold):
        the_plan, result = bench.run(cut, candidates, {"most-popular": run.popular_lists}, keep_lists=True)
    rows = [row(result, m) for m in dict.fromkeys(result.scores["model"])]
    hidden_lists = result.lists[hidden]
    lengths = {str(u): int(n) for u, n in hidden_lists.groupby("user_id").size().items()}
    rows[[r["model"] for r in rows].index(hidden)]["mean_list_length"] = float(
        np.mean([lengths.get(u, 0) for u in the_plan.users])
    )
    seen = cut.train.groupby("user_id")["item_id"].apply(set)
    rng = np.random.default_rng(COLD_SEED)
    everything = np.array(sorted(pd.concat([cut.train["item_id"], cut.test["item_id"]]).unique()))
    cold_array = np.array(sorted(cold))
    for name, pool, sizes in (
        ("random, any item", everything, None),
        ("random, cold items only", cold_array, None),
        ("random, cold items, recsql's list lengths", cold_array, lengths),
    ):
        draw = random_lists(pool, seen, sizes, rng)
        frames = [the_plan.score(draw(cut, the_plan.users, K), (K,)) for _ in range(RANDOM_DRAWS)]
        mean = pd.concat(frames).groupby("metric")["value"].mean()
        r = {"model": name, **{m: float(mean[m]) for m in metrics.METRICS}, "draws": RANDOM_DRAWS}
        rows.append(r)
        print(describe(r), flush=True)
    return {
        "cold_items": len(cold),
        "fraction": COLD_FRACTION,
        "seed": COLD_SEED,
        "split": result.split,
        "users": result.users,
        "heldout_on_cold_items": len(the_plan.truth),
        "metric": "metrics@10 with only the user's test interactions on cold items relevant",
        "models": rows,
    }


def source_version() -> dict[str, Any]:
    """The commit measured, and whether sql/ or migrations/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "sql", "migrations"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": head.stdout.strip(), "sql_modified": bool(dirty.stdout.strip())}


def open_bench(data_dir: Path, prototypes: Sequence[Path]) -> Bench:
    """Build the source database from the data and connect to it."""
    texts = [path.read_text() for path in prototypes]
    url, _ = build_source(db.database_url(), load_interactions(data_dir), load_catalog(data_dir), texts)
    conn = db.connect(url)
    return Bench(conn, url, split.load_events(conn), texts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Offline quality of recsql vs baselines on ML-100k")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with ml-100k.inter and .item")
    parser.add_argument(
        "--split", choices=("test", "validation"), default="test", help="split of the final table"
    )
    parser.add_argument("--sweep", action="store_true", help="tune every model on the validation split first")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"JSON file (default {RESULTS.name}, or {SWEEP_RESULTS.name} with --sweep, in {RESULTS.parent})",
    )
    parser.add_argument(
        "--no-cold-start", dest="cold_start", action="store_false", help="skip the cold-start check"
    )
    parser.add_argument(
        "--weights",
        type=lambda text: tuple(float(w) for w in text.split(",")),
        default=EMBEDDING_WEIGHTS,
        help="hybrid embedding_weight values (default %(default)s)",
    )
    parser.add_argument(
        "--prototype",
        type=Path,
        action="append",
        default=[],
        help="SQL file run in every database after migrating (changed functions to compare); repeatable",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    version = source_version()  # now: the databases are migrated from the tree as it is at the start
    bench = open_bench(args.data_dir, args.prototype)
    report: dict[str, Any] = {}
    tuned, baselines = dict(TUNED), BASELINE_DEFAULTS
    try:
        if args.sweep:
            report["sweep"] = swept = sweep(bench)
            tuned = {k: v for k, v in swept["best"]["recsql"]["params"].items() if k != "embedding_weight"}
            baselines = [(name, kind, swept["best"][name]["params"]) for name, kind, _ in BASELINE_DEFAULTS]
        chosen: float | None = None
        if args.split == "test":
            print("\nembedding_weight on the validation split:", flush=True)
            chosen, validation_rows = pick_weight(bench, tuned, args.weights)
            report["embedding_weight_validation"] = {"chosen": chosen, "rows": validation_rows}
            print(f"chosen on validation: embedding_weight {chosen:g}", flush=True)
        print(f"\nFinal table on the {args.split} split:", flush=True)
        the_plan, result = main_table(bench, args.split, tuned, baselines, args.weights)
        models = list(dict.fromkeys(result.scores["model"]))
        default_name = models[0]
        report["ndcg_ratios"] = compare(the_plan, result, default_name, [name for name, _, _ in baselines])
        report["hybrid_vs_cooccurrence"] = compare(
            the_plan,
            result,
            f"recsql tuned, hybrid (w={chosen if chosen is not None else 0.2:g})",
            ["recsql tuned, co-occurrence (w=0)"],
        )
        if args.cold_start:
            report["cold_start"] = cold_start(bench, args.split, tuned, args.weights)
    finally:
        bench.conn.close()
    wall = time.perf_counter() - started
    report |= {
        "dataset": "ml-100k",
        **version,
        "prototypes": [str(path) for path in args.prototype],
        "protocol": (
            f"recsql.evaluation: holdout-last {HOLDOUT} per user (ceil, by time then arrival), k={K},"
            " seen items excluded, metrics from recsql.evaluation.metrics"
        ),
        "split": result.split,
        "data_fingerprint": result.fingerprint,
        "users": result.users,
        "tuned": tuned,
        "chosen_weight": chosen,
        "replay_seconds": round(result.seconds.get("replay", 0.0), 1),
        "wall_seconds": round(wall, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": [row(result, m) | {"params": result.params.get(m)} for m in models],
    }
    print(f"\nSummary ({args.split} split, k={K}, wall {wall:.0f}s):\n{HEADER}")
    for r in report["models"]:
        print(describe(r))
    output: Path = args.output or (SWEEP_RESULTS if args.sweep else RESULTS)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
