"""Offline quality of recsql.recommend() against standard baselines on MovieLens-100k.

Protocol: each user's interactions are ordered by (timestamp, item id); the last 20% are held out
for testing and the rest is training. Training is replayed into recsql in timestamp order as
'rating' events (value = the rating) and folded; every test user then gets recsql.recommend(user,
10, exclude_seen => true). Baselines (most popular, implicit's item-item cosine and BM25, implicit
ALS, EASE) are trained on the same training matrix with seen items excluded. Metrics: HR@10,
NDCG@10 (binary relevance), Recall@10 and catalog coverage.

Settings are chosen on a validation split (the last 20% of each user's training interactions) with
--sweep; the default run reports test numbers for the chosen settings.

Embeddings (unless --no-embeddings): after the rows above, the worker's code fills both spaces of the
same database (a forced behaviour refit on the folded training pairs, and all-MiniLM-L6-v2 on each
movie's title, first genre and "Genres: ..., released YEAR" description) and recommend() is scored
again for settings.embedding_weight 0 (co-occurrence only), 1 (embedding only) and each of --weights
(hybrid); the weight is picked on the validation split. Cold start (unless --no-cold-start): 10% of
the items, drawn with a seed, lose every training event (they keep their titles); for test users with
held-out interactions on them, recall@10 counted on those items only, for recsql at each weight,
most-popular, and random lists.

    RECSQL_HOME=/tmp/rh-quality python bench/quality.py [--sweep] [--split test|validation]
    python bench/quality.py --no-embeddings          # the co-occurrence table only, as before
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from scipy import sparse

ROOT = Path(__file__).resolve().parent.parent
# The repository first; this folder last, since bench/http.py would shadow the standard library's http
# that the text model's imports need.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from recsql import db, migrate  # noqa: E402

DATA_DIR = Path("/work/shared/datasets/ml-100k")
RESULTS = ROOT / "bench" / "results" / "quality.json"
SWEEP_RESULTS = RESULTS.with_name("quality-sweep.json")
DATABASE = "recsql_quality"
# SQL files run in every freshly migrated database (--prototype): changed functions to compare.
PROTOTYPES: list[Path] = []
K = 10
HOLDOUT = 0.2

# The settings this benchmark recommends, from the top plateau of NDCG@10 on the validation split
# (--sweep): neighbors_per_item 500 scores 0.001 more there but makes every list 2.5 times longer.
DEFAULT_SETTINGS: dict[str, Any] = {
    "cooc_window": 20,
    "history_length": 15,
    "history_half_life": 5.0,
    "similarity": "cosine",
    "neighbors_per_item": 200,
    "min_support": 2,
}
# The 'rating' event type: value_max None means every rating counts the same (binary).
DEFAULT_RATING: dict[str, Any] = {"weight": 3.0, "value_min": 1.0, "value_max": 5.0}

Recs = dict[int, list[int]]


# --- data -----------------------------------------------------------------------------------------


def load_interactions(data_dir: Path) -> pd.DataFrame:
    """Read ml-100k.inter as integer user, item, rating, timestamp columns in replay order."""
    df = pd.read_csv(data_dir / "ml-100k.inter", sep="\t")
    df.columns = pd.Index(["user", "item", "rating", "ts"])
    df = df.astype({"user": "int64", "item": "int64", "rating": "float64", "ts": "int64"})
    return df.sort_values(["ts", "user", "item"], kind="mergesort").reset_index(drop=True)


def load_catalog(data_dir: Path) -> pd.DataFrame:
    """Read ml-100k.item: item id, title, the first listed genre as category, and a description
    naming every genre and the year (the text the text space embeds)."""
    df = pd.read_csv(data_dir / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    df.columns = pd.Index(["item", "title", "year", "genres"])
    df["category"] = df["genres"].str.split(" ").str[0].replace("", None)
    genres = df["genres"].str.split(" ").str.join(", ")
    df["description"] = ("Genres: " + genres + ".").where(df["genres"] != "", "") + (
        " Released " + df["year"] + "."
    ).where(df["year"] != "", "")
    return df[["item", "title", "category", "description"]]


def split_last(df: pd.DataFrame, frac: float = HOLDOUT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out each user's last ceil(frac * n) interactions by (timestamp, item); ties are deterministic."""
    ordered = df.sort_values(["user", "ts", "item"], kind="mergesort")
    pos = ordered.groupby("user").cumcount()
    n = ordered.groupby("user")["item"].transform("size")
    held = pos >= n - np.ceil(frac * n).astype("int64")
    train = ordered[~held].sort_values(["ts", "user", "item"], kind="mergesort").reset_index(drop=True)
    test = ordered[held].reset_index(drop=True)
    return train, test


# --- metrics --------------------------------------------------------------------------------------


@dataclass
class Scores:
    """Accuracy of one model on one split."""

    hr: float
    ndcg: float
    recall: float
    coverage: float
    users: int
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    per_user_ndcg: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)


def evaluate(recs: Recs, heldout: dict[int, set[int]], n_train_items: int, k: int = K) -> Scores:
    """HR, NDCG (binary gains, ideal DCG over min(k, |heldout|)), recall and catalog coverage."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hr = recall = 0.0
    ndcg = np.zeros(len(heldout))
    shown: set[int] = set()
    for n, (user, relevant) in enumerate(sorted(heldout.items())):
        top = recs.get(user, [])[:k]
        shown.update(top)
        gains = np.array([1.0 if item in relevant else 0.0 for item in top] + [0.0] * (k - len(top)))
        hits = gains.sum()
        hr += float(hits > 0)
        recall += hits / len(relevant)
        ndcg[n] = float(gains @ discounts) / float(discounts[: min(k, len(relevant))].sum())
    users = len(heldout)
    return Scores(
        hr / users, float(ndcg.mean()), recall / users, len(shown) / n_train_items, users, per_user_ndcg=ndcg
    )


def ratio_interval(ours: Scores, theirs: Scores, resamples: int = 2000) -> tuple[float, float]:
    """95% paired-bootstrap interval (resampling users) of the ratio of mean NDCGs."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, ours.users, size=(resamples, ours.users))
    ratios = ours.per_user_ndcg[picks].mean(axis=1) / theirs.per_user_ndcg[picks].mean(axis=1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


# --- recsql ---------------------------------------------------------------------------------------


def fresh_database(server_url: str, name: str) -> str:
    """Drop and recreate database ``name``, migrate it to head and return its URL."""
    with psycopg.connect(make_conninfo(server_url, dbname="postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(server_url, dbname=name)
    migrate.upgrade(url)
    return url


def load_recsql(conn: psycopg.Connection[Any], train: pd.DataFrame, catalog: pd.DataFrame | None) -> int:
    """COPY the catalog and the training ratings (in replay order) into recsql and fold them."""
    if catalog is not None:
        with (
            conn.cursor() as cur,
            cur.copy("COPY recsql.items (item_id, title, category, properties) FROM STDIN") as cp,
        ):
            columns = [catalog[c].tolist() for c in ("item", "title", "category", "description")]
            for item, title, category, description in zip(*columns, strict=True):
                cp.write_row((str(item), title, category, Jsonb({"description": description.strip()})))
    with (
        conn.cursor() as cur,
        cur.copy("COPY recsql.events (event_id, user_id, item_id, event_type, value, ts) FROM STDIN") as cp,
    ):
        columns = [train[c].tolist() for c in ("user", "item", "rating", "ts")]
        for user, item, rating, ts in zip(*columns, strict=True):
            cp.write_row(
                (
                    f"ml-{user}-{item}",
                    str(user),
                    str(item),
                    "rating",
                    rating,
                    datetime.fromtimestamp(ts, tz=UTC),
                )
            )
    folded = conn.execute("SELECT recsql.flush()").fetchone()
    return int(folded[0]) if folded else 0


SETTING_COLUMNS = frozenset(DEFAULT_SETTINGS)


# Changing one of these needs the pairs replayed (rebuild), or only the neighbour lists recomputed.
REPLAY_SETTINGS = frozenset({"cooc_window"})
LIST_SETTINGS = frozenset({"similarity", "min_support", "neighbors_per_item"})


def apply_settings(conn: psycopg.Connection[Any], settings: dict[str, Any], rating: dict[str, Any]) -> str:
    """Write settings and the rating event type; rebuild or refresh what they invalidate; say which."""
    old = conn.execute("SELECT row_to_json(s) FROM recsql.settings s").fetchone()
    changed = {name for name, value in settings.items() if old is None or old[0].get(name) != value}
    for name in sorted(changed):
        if name not in SETTING_COLUMNS:
            raise ValueError(f"unknown setting {name!r}")
        conn.execute(
            sql.SQL("UPDATE recsql.settings SET {} = %s").format(sql.Identifier(name)), (settings[name],)
        )
    conn.execute(
        "UPDATE recsql.event_types SET weight = %s, value_min = %s, value_max = %s WHERE name = 'rating'",
        (rating["weight"], rating["value_min"], rating["value_max"]),
    )
    if changed & REPLAY_SETTINGS:
        conn.execute("SELECT recsql.rebuild()")
        conn.execute("ANALYZE recsql.item_pairs, recsql.neighbor_lists")
        return "rebuild"
    if changed & LIST_SETTINGS:
        conn.execute("SELECT recsql.mark_all_neighbors()")
        conn.execute("SELECT recsql.refresh_neighbors()")
        return "refresh"
    return ""


def read_settings(conn: psycopg.Connection[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tuned settings columns and the 'rating' event type as the database has them."""
    row = conn.execute("SELECT row_to_json(s) FROM recsql.settings s").fetchone()
    rating = conn.execute(
        "SELECT json_build_object('weight', weight, 'value_min', value_min, 'value_max', value_max)"
        " FROM recsql.event_types WHERE name = 'rating'"
    ).fetchone()
    if row is None or rating is None:
        raise RuntimeError("recsql.settings or the 'rating' event type is missing; is the schema migrated?")
    return {name: row[0][name] for name in DEFAULT_SETTINGS}, dict(rating[0])


def recommend_all(conn: psycopg.Connection[Any], users: Sequence[int], k: int = K) -> Recs:
    """recsql.recommend(user, k, exclude_seen => true) for every user in one statement."""
    rows = conn.execute(
        "SELECT u.user_id, r.item_id"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS u(user_id, ord)"
        " CROSS JOIN LATERAL recsql.recommend(u.user_id, %s, exclude_seen => true) WITH ORDINALITY AS r"
        " ORDER BY u.ord, r.ordinality",
        ([str(u) for u in users], k),
    ).fetchall()
    recs: Recs = {}
    for user_id, item_id in rows:
        recs.setdefault(int(user_id), []).append(int(item_id))
    return recs


# --- baselines ------------------------------------------------------------------------------------


@dataclass
class Matrix:
    """The training interactions as a user x item CSR matrix with id maps."""

    binary: sparse.csr_matrix
    rating: sparse.csr_matrix
    users: np.ndarray
    items: np.ndarray

    def top(self, scores: np.ndarray, user_rows: np.ndarray, k: int = K) -> Recs:
        """Top-k item ids per user from dense scores, leaving out each user's training items."""
        scores = scores.astype(np.float64, copy=True)
        seen = self.binary[user_rows]
        scores[seen.nonzero()] = -np.inf
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        best = np.take_along_axis(part, order, axis=1)
        return {int(self.users[u]): [int(self.items[i]) for i in best[n]] for n, u in enumerate(user_rows)}


def build_matrix(train: pd.DataFrame) -> Matrix:
    users = np.sort(train["user"].unique())
    items = np.sort(train["item"].unique())
    rows = np.searchsorted(users, train["user"].to_numpy())
    cols = np.searchsorted(items, train["item"].to_numpy())
    shape = (len(users), len(items))
    ones = np.ones(len(train), dtype=np.float32)
    rating = train["rating"].to_numpy(dtype=np.float32)
    return Matrix(
        sparse.csr_matrix((ones, (rows, cols)), shape=shape),
        sparse.csr_matrix((rating, (rows, cols)), shape=shape),
        users,
        items,
    )


def popular(m: Matrix, user_rows: np.ndarray, params: dict[str, Any]) -> Recs:
    """Most interacted-with training items the user has not seen."""
    counts = np.asarray(m.binary.sum(axis=0)).ravel()
    return m.top(np.tile(counts, (len(user_rows), 1)), user_rows)


def ease(m: Matrix, user_rows: np.ndarray, params: dict[str, Any]) -> Recs:
    """EASE (Steck 2019): B = I - P / diag(P), P = (X^T X + lambda I)^-1; scores X_u B."""
    x = (m.rating if params["weights"] == "rating" else m.binary).astype(np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += params["lambda"]
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return m.top(np.asarray(x[user_rows] @ b), user_rows)


def _implicit_recs(model: Any, x: sparse.csr_matrix, m: Matrix, user_rows: np.ndarray) -> Recs:
    model.fit(x, show_progress=False)
    ids, _ = model.recommend(user_rows, x[user_rows], N=K, filter_already_liked_items=True)
    return {int(m.users[u]): [int(m.items[i]) for i in ids[n] if i >= 0] for n, u in enumerate(user_rows)}


def item_knn(m: Matrix, user_rows: np.ndarray, params: dict[str, Any]) -> Recs:
    """implicit's item-item CosineRecommender or BM25Recommender."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    x = (m.rating if params["weights"] == "rating" else m.binary).tocsr()
    model: Any
    if params["model"] == "bm25":
        model = BM25Recommender(
            K=params["K"], K1=params.get("K1", 1.2), B=params.get("B", 0.75), num_threads=1
        )
    else:
        model = CosineRecommender(K=params["K"], num_threads=1)
    return _implicit_recs(model, x, m, user_rows)


def als(m: Matrix, user_rows: np.ndarray, params: dict[str, Any]) -> Recs:
    """implicit's AlternatingLeastSquares with a fixed random_state."""
    from implicit.als import AlternatingLeastSquares

    x = (m.rating if params["weights"] == "rating" else m.binary).tocsr()
    model = AlternatingLeastSquares(
        factors=params["factors"],
        regularization=params["regularization"],
        alpha=params["alpha"],
        iterations=params.get("iterations", 15),
        random_state=42,
        num_threads=1,
    )
    return _implicit_recs(model, x, m, user_rows)


Baseline = Callable[[Matrix, np.ndarray, dict[str, Any]], Recs]
BASELINES: dict[str, Baseline] = {"popular": popular, "ease": ease, "itemknn": item_knn, "als": als}

# Best settings of each baseline on the validation split (see --sweep); binary vs rating-weighted
# input is one of the tuned choices.
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


def recsql_grid() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """recsql settings tried by --sweep: per co-occurrence window, each knob varied around the defaults."""
    binary = dict(DEFAULT_RATING, value_min=None, value_max=None)
    options: dict[str, tuple[Any, ...]] = {
        "history_half_life": (2.0, 3.0, 5.0, 10.0, 30.0),
        "history_length": (15, 30, 50),
        "similarity": ("cosine", "jaccard", "count"),
        "neighbors_per_item": (20, 50, 100, 200, 500),
        "min_support": (1, 2, 3, 5),
    }
    grid: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for window in (5, 10, 20, 50, 200):
        base = dict(DEFAULT_SETTINGS, cooc_window=window)
        grid.append((base, DEFAULT_RATING))
        grid += [(dict(base, history_length=n, history_half_life=1e6), DEFAULT_RATING) for n in (10, 30, 100)]
        for name, values in options.items():
            grid += [(dict(base, **{name: v}), DEFAULT_RATING) for v in values if v != base[name]]
        grid.append((base, binary))
    return grid


# --- running --------------------------------------------------------------------------------------


@dataclass
class Split:
    """Training interactions and each user's held-out items."""

    name: str
    train: pd.DataFrame
    heldout: dict[int, set[int]]

    @property
    def n_items(self) -> int:
        return int(self.train["item"].nunique())


def make_split(df: pd.DataFrame, name: str) -> Split:
    train, test = split_last(df)
    if name == "validation":
        train, test = split_last(train)
    heldout: dict[int, set[int]] = {}
    for user, item in zip(test["user"].tolist(), test["item"].tolist(), strict=True):
        heldout.setdefault(user, set()).add(item)
    return Split(name, train, heldout)


class RecsqlRunner:
    """One freshly loaded recsql database for a split, evaluated under any settings."""

    def __init__(self, server_url: str, split: Split, catalog: pd.DataFrame | None) -> None:
        self.split = split
        started = time.perf_counter()
        self.url = fresh_database(server_url, DATABASE)
        self.conn = psycopg.connect(self.url, autocommit=True)
        for path in PROTOTYPES:
            self.conn.execute(path.read_text())
        self.schema_settings, self.schema_rating = read_settings(self.conn)
        n = load_recsql(self.conn, split.train, catalog)
        self.conn.execute("ANALYZE")
        self.load_seconds = time.perf_counter() - started
        print(
            f"[{split.name}] loaded and folded {n} events in {self.load_seconds:.1f}s "
            f"({n / self.load_seconds:,.0f} events/s)",
            flush=True,
        )

    def score(self, settings: dict[str, Any] | None, rating: dict[str, Any] | None) -> Scores:
        """Evaluate under settings and rating type (None: what the migrated schema had)."""
        settings = settings or self.schema_settings
        rating = rating or self.schema_rating
        started = time.perf_counter()
        redone = apply_settings(self.conn, settings, rating)
        redo_seconds = time.perf_counter() - started
        recs = recommend_all(self.conn, sorted(self.split.heldout))
        scores = evaluate(recs, self.split.heldout, self.split.n_items)
        scores.seconds = time.perf_counter() - started
        scores.extra = {"settings": settings, "rating": rating}
        if redone:
            scores.extra[f"{redone}_seconds"] = round(redo_seconds, 2)
        return scores

    def close(self) -> None:
        self.conn.close()


def score_baseline(split: Split, matrix: Matrix, kind: str, params: dict[str, Any]) -> Scores:
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    user_rows = np.searchsorted(matrix.users, np.array(sorted(split.heldout)))
    with threadpool_limits(1), warnings.catch_warnings():
        # implicit's item-item models convert their own intermediate matrices and warn about it.
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        recs = BASELINES[kind](matrix, user_rows, params)
    scores = evaluate(recs, split.heldout, split.n_items)
    scores.seconds = time.perf_counter() - started
    scores.extra = {"params": params}
    return scores


def describe(name: str, s: Scores) -> str:
    return f"{name:40s} {s.hr:7.4f} {s.ndcg:8.4f} {s.recall:9.4f} {s.coverage:9.3f} {s.seconds:8.1f}"


HEADER = f"{'model':40s} {'HR@10':>7s} {'NDCG@10':>8s} {'Recall@10':>9s} {'coverage':>9s} {'seconds':>8s}"


def best_by_ndcg(results: Iterable[tuple[str, Scores]]) -> dict[str, Scores]:
    best: dict[str, Scores] = {}
    for name, s in results:
        if name not in best or s.ndcg > best[name].ndcg:
            best[name] = s
    return best


def sweep(df: pd.DataFrame, server_url: str, catalog: pd.DataFrame | None) -> dict[str, Any]:
    """Try every grid setting on the validation split; return the best per model and all rows."""
    split = make_split(df, "validation")
    rows: list[tuple[str, Scores]] = []
    runner = RecsqlRunner(server_url, split, catalog)
    try:
        grid = recsql_grid()
        for n, (settings, rating) in enumerate(grid, 1):
            s = runner.score(settings, rating)
            rows.append(("recsql", s))
            print(
                f"[sweep {n}/{len(grid)}] recsql {json.dumps(settings)} rating value_max={rating['value_max']}"
                f" NDCG {s.ndcg:.4f} HR {s.hr:.4f} ({s.seconds:.1f}s)",
                flush=True,
            )
    finally:
        runner.close()
    matrix = build_matrix(split.train)
    for name, kind, params in baseline_grid():
        s = score_baseline(split, matrix, kind, params)
        rows.append((name, s))
        print(f"[sweep] {name} {json.dumps(params)} NDCG {s.ndcg:.4f} HR {s.hr:.4f}", flush=True)
    best = best_by_ndcg(rows)
    print("\nBest on the validation split:\n" + HEADER)
    for name, s in best.items():
        print(describe(name, s), " ", json.dumps(s.extra))
    return {
        "best": {name: {"ndcg": s.ndcg, **s.extra} for name, s in best.items()},
        "rows": [
            {"model": name, "hr": s.hr, "ndcg": s.ndcg, "recall": s.recall, "coverage": s.coverage, **s.extra}
            for name, s in rows
        ],
    }


def evaluate_all(
    df: pd.DataFrame,
    split_name: str,
    server_url: str,
    catalog: pd.DataFrame | None,
    recsql_configs: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
    baselines: list[tuple[str, str, dict[str, Any]]],
    embedding_weights: Sequence[float] | None = None,
) -> list[tuple[str, Scores]]:
    """Score each recsql configuration and each baseline on one split; with ``embedding_weights``,
    then fill the embedding spaces and score the last configuration at each weight (score_weights)."""
    split = make_split(df, split_name)
    print(
        f"[{split_name}] {len(split.train)} training interactions, {len(split.heldout)} users, "
        f"{sum(map(len, split.heldout.values()))} held out",
        flush=True,
    )
    results: list[tuple[str, Scores]] = []
    runner = RecsqlRunner(server_url, split, catalog)
    print(HEADER, flush=True)
    try:
        for name, settings, rating in recsql_configs:
            s = runner.score(settings, rating)
            s.extra["load_seconds"] = round(runner.load_seconds, 2)
            results.append((name, s))
            print(describe(name, s), flush=True)
        if embedding_weights is not None:
            _, settings, rating = recsql_configs[-1]
            results += score_weights(runner, settings, rating, embedding_weights)
    finally:
        runner.close()
    matrix = build_matrix(split.train)
    for name, kind, params in baselines:
        s = score_baseline(split, matrix, kind, params)
        results.append((name, s))
        print(describe(name, s), flush=True)
    return results


# --- embeddings -----------------------------------------------------------------------------------

EMBEDDING_WEIGHTS = (0.1, 0.2, 0.3, 0.5)
COLD_FRACTION = 0.1
COLD_SEED = 7


@functools.cache
def text_encoder() -> Any:
    """all-MiniLM-L6-v2, loaded once per run; None (and a warning) without the text extra."""
    from recsql.embeddings import text

    reason = text.unavailable_reason()
    if reason is not None:
        print(f"warning: {reason}; only the behaviour space is filled", flush=True)
        return None
    return text.TextEncoder(threads=1)


def embed(url: str) -> dict[str, Any]:
    """Fill both spaces with the worker's code: a forced behaviour refit, then the text queue."""
    from recsql.embeddings.worker import Embedder

    out: dict[str, Any] = {}
    with db.connection(url) as conn:
        started = time.perf_counter()
        out["behavior_items"] = Embedder(url, spaces=("behavior",)).refit_behavior_if_due(conn, force=True)
        out["behavior_seconds"] = round(time.perf_counter() - started, 2)
        encoder = text_encoder()
        if encoder is not None:
            started = time.perf_counter()
            out["text_items"] = Embedder(url, spaces=("text",), encoder=encoder).round(conn)
            out["text_seconds"] = round(time.perf_counter() - started, 2)
    print(f"  embeddings: {out}", flush=True)
    return out


def set_embedding_weight(conn: psycopg.Connection[Any], weight: float) -> float:
    """Set settings.embedding_weight; return the previous value."""
    row = conn.execute(
        "UPDATE recsql.settings n SET embedding_weight = %s FROM recsql.settings o RETURNING o.embedding_weight",
        (weight,),
    ).fetchone()
    return float(row[0]) if row else weight


def weight_configs(weights: Sequence[float]) -> list[tuple[str, float]]:
    return [("recsql co-occurrence (w=0)", 0.0), ("recsql embedding (w=1)", 1.0)] + [
        (f"recsql hybrid (w={w:g})", w) for w in weights
    ]


def score_weights(
    runner: RecsqlRunner,
    settings: dict[str, Any] | None,
    rating: dict[str, Any] | None,
    weights: Sequence[float],
) -> list[tuple[str, Scores]]:
    """Fill the embedding spaces, then score recommend() at embedding_weight 0, 1 and each weight."""
    info = embed(runner.url)
    rows: list[tuple[str, Scores]] = []
    schema_weight = set_embedding_weight(runner.conn, 0.0)
    try:
        for name, weight in weight_configs(weights):
            set_embedding_weight(runner.conn, weight)
            s = runner.score(settings, rating)
            s.extra |= {"embedding_weight": weight, "embeddings": info}
            rows.append((name, s))
            print(describe(name, s), flush=True)
        rows += one_space_rows(runner, settings, rating)
    finally:
        set_embedding_weight(runner.conn, schema_weight)
    return rows


def one_space_rows(
    runner: RecsqlRunner, settings: dict[str, Any] | None, rating: dict[str, Any] | None
) -> list[tuple[str, Scores]]:
    """Embedding only (weight 1) with one space at a time, the other's weight set to 0: what each adds."""
    weights = dict(runner.conn.execute("SELECT name, weight FROM recsql.embedding_spaces").fetchall())
    rows: list[tuple[str, Scores]] = []
    set_embedding_weight(runner.conn, 1.0)
    try:
        for space in sorted(weights):
            for name, weight in weights.items():
                runner.conn.execute(
                    "UPDATE recsql.embedding_spaces SET weight = %s WHERE name = %s",
                    (weight if name == space else 0.0, name),
                )
            label = f"recsql embedding, {space} only"
            s = runner.score(settings, rating)
            s.extra |= {"embedding_weight": 1.0, "space": space}
            rows.append((label, s))
            print(describe(label, s), flush=True)
    finally:
        for name, weight in weights.items():
            runner.conn.execute(
                "UPDATE recsql.embedding_spaces SET weight = %s WHERE name = %s", (weight, name)
            )
    return rows


def pick_weight(
    df: pd.DataFrame,
    server_url: str,
    catalog: pd.DataFrame,
    settings: dict[str, Any],
    rating: dict[str, Any],
    weights: Sequence[float],
) -> tuple[float, list[dict[str, Any]]]:
    """The hybrid embedding_weight with the best NDCG@10 on the validation split, and every row."""
    split = make_split(df, "validation")
    runner = RecsqlRunner(server_url, split, catalog)
    try:
        apply_settings(runner.conn, settings, rating)
        print(HEADER, flush=True)
        rows = score_weights(runner, settings, rating, weights)
    finally:
        runner.close()
    hybrid = [(s.extra["embedding_weight"], s) for name, s in rows if name.startswith("recsql hybrid")]
    best = max(hybrid, key=lambda ws: ws[1].ndcg)[0]
    return best, [{"model": name, "ndcg": s.ndcg, "hr": s.hr, "recall": s.recall} for name, s in rows]


def cold_items(df: pd.DataFrame, fraction: float, seed: int) -> set[int]:
    items = np.sort(df["item"].unique())
    rng = np.random.default_rng(seed)
    return set(rng.choice(items, size=round(fraction * len(items)), replace=False).tolist())


def random_lists(
    candidates: np.ndarray,
    users: Sequence[int],
    seen: dict[int, set[int]],
    rng: np.random.Generator,
    lengths: dict[int, int] | None = None,
) -> Recs:
    """K (or ``lengths[user]``) random candidates per user, none the user saw in training."""
    recs: Recs = {}
    for user in users:
        n = K if lengths is None else lengths.get(user, 0)
        pool = [int(i) for i in rng.permutation(candidates)[: n + len(seen.get(user, ()))]]
        recs[user] = [i for i in pool if i not in seen.get(user, set())][:n]
    return recs


def cold_start(
    df: pd.DataFrame,
    split_name: str,
    server_url: str,
    catalog: pd.DataFrame,
    settings: dict[str, Any],
    rating: dict[str, Any],
    weights: Sequence[float],
    fraction: float = COLD_FRACTION,
    seed: int = COLD_SEED,
    draws: int = 20,
) -> dict[str, Any]:
    """Recall@10 on items with no training events at all, for users whose held-out items include them."""
    base = make_split(df, split_name)
    cold = cold_items(df, fraction, seed)
    train = base.train[~base.train["item"].isin(cold)].reset_index(drop=True)
    trained_users = set(train["user"].tolist())
    relevant = {u: items & cold for u, items in base.heldout.items() if items & cold and u in trained_users}
    split = Split(f"{split_name}, cold", train, relevant)
    print(
        f"\nCold start: {len(cold)} items ({fraction:.0%}, seed {seed}) without training events;"
        f" {len(relevant)} test users with {sum(map(len, relevant.values()))} held-out interactions on them",
        flush=True,
    )
    n_catalog = len(catalog)
    rows: list[tuple[str, Scores]] = []
    runner = RecsqlRunner(server_url, split, catalog)
    users = sorted(relevant)
    try:
        apply_settings(runner.conn, settings, rating)
        info = embed(runner.url)
        print(HEADER, flush=True)
        for name, weight in weight_configs(weights):
            set_embedding_weight(runner.conn, weight)
            s = evaluate(recommend_all(runner.conn, users), relevant, n_catalog)
            s.extra = {"embedding_weight": weight}
            rows.append((name, s))
            print(describe(name, s), flush=True)
        # Ranking the cold items alone: every other item hidden, at the schema's weight.
        runner.conn.execute(
            "UPDATE recsql.items SET hidden_at = now() WHERE item_id <> ALL(%s)", ([str(i) for i in cold],)
        )
        set_embedding_weight(runner.conn, 0.2)
        recs = recommend_all(runner.conn, users)
        s = evaluate(recs, relevant, n_catalog)
        s.extra = {
            "embedding_weight": 0.2,
            "mean_list_length": float(np.mean([len(recs.get(u, [])) for u in users])),
        }
        hidden_lengths = {u: len(recs.get(u, [])) for u in users}
        rows.append(("recsql hybrid (w=0.2), warm items hidden", s))
        print(describe(rows[-1][0], s), flush=True)
    finally:
        runner.close()
    matrix = build_matrix(train)
    s = score_baseline(Split(split.name, train, relevant), matrix, "popular", {})
    rows.append(("most-popular", s))
    print(describe("most-popular", s), flush=True)
    seen: dict[int, set[int]] = {}
    for user, item in zip(train["user"].tolist(), train["item"].tolist(), strict=True):
        seen.setdefault(user, set()).add(item)
    rng = np.random.default_rng(seed)
    everything = catalog["item"].astype("int64").to_numpy()
    cold_array = np.array(sorted(cold))
    for name, candidates, lengths in (
        ("random, any item", everything, None),
        ("random, cold items only", cold_array, None),
        ("random, cold items, recsql's list lengths", cold_array, hidden_lengths),
    ):
        draws_scores = [
            evaluate(random_lists(candidates, users, seen, rng, lengths), relevant, n_catalog)
            for _ in range(draws)
        ]
        s = Scores(
            float(np.mean([d.hr for d in draws_scores])),
            float(np.mean([d.ndcg for d in draws_scores])),
            float(np.mean([d.recall for d in draws_scores])),
            0.0,
            len(users),
            extra={"draws": draws},
        )
        rows.append((name, s))
        print(describe(name, s), flush=True)
    return {
        "cold_items": len(cold),
        "fraction": fraction,
        "seed": seed,
        "users": len(users),
        "heldout_on_cold_items": sum(map(len, relevant.values())),
        "embeddings": info,
        "metric": "HR/NDCG/Recall@10 with only the user's held-out cold items relevant",
        "models": [
            {"model": name, "hr": s.hr, "ndcg": s.ndcg, "recall": s.recall, **s.extra} for name, s in rows
        ],
    }


def embedding_summary(
    scores: dict[str, Scores], weights: Sequence[float], chosen: float | None
) -> dict[str, Any]:
    """Each method's NDCG@10; hybrid (schema default and chosen weight) against co-occurrence alone."""
    cooc = scores["recsql co-occurrence (w=0)"]
    hybrid = {w: scores[f"recsql hybrid (w={w:g})"] for w in weights}
    best_on_split = max(hybrid, key=lambda w: hybrid[w].ndcg)
    out: dict[str, Any] = {
        "ndcg": {name: s.ndcg for name, s in scores.items() if name.startswith("recsql ")},
        "best_weight_on_this_split": best_on_split,
        "chosen_weight_on_validation": chosen,
        "vs_cooccurrence": {},
    }
    for label, w in (("schema default", 0.2), ("chosen on validation", chosen), ("best here", best_on_split)):
        if w is None or w not in hybrid:
            continue
        low, high = ratio_interval(hybrid[w], cooc)
        ratio = hybrid[w].ndcg / cooc.ndcg
        out["vs_cooccurrence"][label] = {
            "weight": w,
            "ndcg_ratio": ratio,
            "ci95": [low, high],
            "not_worse": hybrid[w].ndcg >= cooc.ndcg,
        }
        print(
            f"recsql hybrid (w={w:g}, {label}) NDCG / co-occurrence alone = {ratio:.3f}"
            f" (95% CI {low:.3f}-{high:.3f})"
        )
    return out


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Offline quality of recsql.recommend() vs baselines on ML-100k"
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with ml-100k.inter and .item")
    parser.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="split the final table is computed on (default: test)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="tune every model on the validation split first, then report the best settings",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"JSON file for the results (default {RESULTS.name}, "
        f"or {SWEEP_RESULTS.name} with --sweep, in {RESULTS.parent})",
    )
    parser.add_argument(
        "--no-embeddings",
        dest="embeddings",
        action="store_false",
        help="skip the embedding methods (and the cold-start check)",
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
        help="SQL file run in each database after migrating (changed functions to compare); repeatable",
    )
    args = parser.parse_args(argv)
    PROTOTYPES[:] = args.prototype

    started = time.perf_counter()
    version = source_version()  # now: the databases are migrated from the tree as it is at the start
    df = load_interactions(args.data_dir)
    catalog = load_catalog(args.data_dir)
    server_url = db.database_url()

    tuned = (DEFAULT_SETTINGS, DEFAULT_RATING)
    baselines = BASELINE_DEFAULTS
    report: dict[str, Any] = {}
    if args.sweep:
        swept = sweep(df, server_url, catalog)
        report["sweep"] = swept
        best = swept["best"]
        tuned = (best["recsql"]["settings"], best["recsql"]["rating"])
        baselines = [(name, kind, best[name]["params"]) for name, kind, _ in BASELINE_DEFAULTS]

    configs: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = [
        ("recsql (schema defaults)", None, None),
        ("recsql (tuned)", tuned[0], tuned[1]),
    ]
    chosen_weight: float | None = None
    if args.embeddings and args.split == "test":
        print("\nembedding_weight on the validation split:", flush=True)
        chosen_weight, validation_rows = pick_weight(df, server_url, catalog, *tuned, args.weights)
        report["embedding_weight_validation"] = {"chosen": chosen_weight, "rows": validation_rows}
        print(f"chosen on validation: embedding_weight {chosen_weight:g}", flush=True)
    print(f"\nFinal table on the {args.split} split:", flush=True)
    weights = args.weights if args.embeddings else None
    results = evaluate_all(df, args.split, server_url, catalog, configs, baselines, weights)

    wall = time.perf_counter() - started
    print(f"\nSummary ({args.split} split, k={K}, wall {wall:.0f}s):\n{HEADER}")
    for name, s in results:
        print(describe(name, s))
    scores = dict(results)
    ours = scores["recsql (tuned)"]
    comparisons: dict[str, Any] = {}
    for name in ("implicit cosine item-item", "implicit BM25 item-item", "implicit ALS", "EASE"):
        low, high = ratio_interval(ours, scores[name])
        comparisons[name] = {"ndcg_ratio": ours.ndcg / scores[name].ndcg, "ci95": [low, high]}
        print(
            f"recsql (tuned) NDCG / {name} = {ours.ndcg / scores[name].ndcg:.3f} (95% CI {low:.3f}-{high:.3f})"
        )
    report["ndcg_ratios"] = comparisons
    if args.embeddings:
        report["embeddings"] = embedding_summary(scores, args.weights, chosen_weight)
        if args.cold_start:
            report["cold_start"] = cold_start(df, args.split, server_url, catalog, *tuned, args.weights)
            wall = time.perf_counter() - started

    report |= {
        "dataset": "ml-100k",
        **version,
        "prototypes": [str(path) for path in args.prototype],
        "protocol": f"per-user last {HOLDOUT:.0%} by (timestamp, item id) held out; k={K}; seen items excluded",
        "split": args.split,
        "users": results[0][1].users,
        "wall_seconds": round(wall, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": [
            {
                "model": name,
                "hr": s.hr,
                "ndcg": s.ndcg,
                "recall": s.recall,
                "coverage": s.coverage,
                "seconds": round(s.seconds, 2),
                **s.extra,
            }
            for name, s in results
        ],
    }
    output: Path = args.output or (SWEEP_RESULTS if args.sweep else RESULTS)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"saved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
