"""`recsql evaluate`: replay the events before a split into a scratch database, ask every test user
for top-k, score the lists against what they did after the split, for the candidate model, the
active model and the popularity baseline side by side. Results go to recsql.evaluations."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
from psycopg.types.json import Jsonb

from recsql import api, db
from recsql.errors import BadInput, NotFound
from recsql.evaluation import metrics, replay, split
from recsql.progress import Progress

POPULAR = "popular"


@dataclass
class Result:
    """Scores of every evaluated model, and what they were computed on."""

    run_id: str
    split: str
    fingerprint: str
    users: int
    scores: pd.DataFrame  # model, metric, k, value
    seconds: dict[str, float] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def value(self, model: str, metric: str, k: int) -> float:
        s = self.scores
        return float(s[(s["model"] == model) & (s["metric"] == metric) & (s["k"] == k)]["value"].iloc[0])

    def table(self) -> pd.DataFrame:
        """Models as columns, (metric, k) as rows."""
        return self.scores.pivot_table(index=["metric", "k"], columns="model", values="value", sort=False)


def model_params(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    row = conn.execute("SELECT params FROM recsql.models WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no model {name!r}; `recsql models list` shows them", code="model_not_found")
    return dict(row["params"])


def active_model(conn: psycopg.Connection[Any]) -> tuple[str, dict[str, Any]]:
    row = conn.execute("SELECT name, params FROM recsql.models WHERE status = 'active'").fetchone()
    if row is None:  # cannot happen while the unique index and the seed hold; be explicit anyway
        current = conn.execute("SELECT recsql.current_params() AS p").fetchone()
        assert current is not None
        return "current", dict(current["p"])
    return str(row["name"]), dict(row["params"])


def popular_lists(train: pd.DataFrame, users: list[str], k: int) -> pd.DataFrame:
    """Most popular training items (by distinct users) that the user has not touched."""
    counts = train.groupby("item_id")["user_id"].nunique().sort_values(ascending=False, kind="stable")
    ranked = list(counts.index[: k + 200])
    seen = train.groupby("user_id")["item_id"].apply(set)
    rows = []
    for user in users:
        mine = seen.get(user, set())
        picks = [i for i in ranked if i not in mine][:k]
        rows += [(user, item, rank) for rank, item in enumerate(picks, 1)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rank"])


def evaluate(
    conn: psycopg.Connection[Any],
    source_url: str,
    *,
    model: str | None = None,
    split_at: datetime | None = None,
    holdout_last: float | None = None,
    baseline: bool = True,
    ks: tuple[int, ...] = metrics.KS,
    max_users: int | None = None,
    show_progress: bool = True,
) -> Result:
    """Evaluate ``model`` (or only the active one) against the log of the database behind ``conn``."""
    if (split_at is None) == (holdout_last is None):
        raise BadInput("give exactly one of --split TIME and --holdout-last FRACTION", code="invalid_split")
    note = Progress("evaluate", enabled=show_progress).note
    active_name, active_params = active_model(conn)
    candidates: dict[str, dict[str, Any]] = {active_name: active_params}
    if model is not None and model != active_name:
        candidates[model] = model_params(conn, model)

    started = time.perf_counter()
    events = split.load_events(conn)
    if events.empty:
        raise BadInput("the event log is empty: nothing to evaluate", code="no_events")
    cut = (
        split.by_time(events, split_at)
        if split_at is not None
        else split.holdout_last(events, holdout_last or 0)
    )
    truth_events = split.test_truth(cut)
    truth = metrics.gains(truth_events)
    users = sorted(truth["user_id"].unique())
    if max_users is not None and len(users) > max_users:
        users = sorted(pd.Series(users).sample(max_users, random_state=0))  # deterministic sample
        truth = truth[truth["user_id"].isin(set(users))]
    if not users:
        raise BadInput(
            f"split {cut.description} leaves no user with new items after it", code="invalid_split"
        )
    note(
        f"split {cut.description}: {len(cut.train):,} training events, {len(cut.test):,} test events,"
        f" {len(users):,} test users (data {cut.fingerprint})"
    )
    popularity = cut.train.groupby("item_id")["user_id"].nunique()
    n_train_users = cut.train["user_id"].nunique()
    items = conn.execute("SELECT count(*) AS n FROM recsql.items").fetchone()
    # Items reach the catalog when folded; count those only in the log too.
    catalog_size = max(int(items["n"]) if items else 0, events["item_id"].nunique())
    k_max = max(ks)
    result = Result(str(uuid.uuid4()), cut.description, cut.fingerprint, len(users), pd.DataFrame())
    frames = []

    def scored(name: str, lists: pd.DataFrame) -> None:
        s = metrics.score(
            lists, truth, catalog_size=catalog_size, popularity=popularity, n_train_users=n_train_users, ks=ks
        )
        frames.append(s.assign(model=name))

    with replay.scratch_database(source_url) as scratch_url, db.connect(scratch_url) as scratch:
        replay.copy_catalog(conn, scratch)
        for n, (name, params) in enumerate(candidates.items()):
            t0 = time.perf_counter()
            how = replay.apply_params(scratch, params)
            if n == 0:
                replay.load_events(
                    scratch,
                    cut.train,
                    Progress(f"replaying training events for {name}", enabled=show_progress, unit="events"),
                )
                api.flush(scratch)
                _refit_behavior(scratch)
            elif how == "rebuilt":
                note(f"{name}: its parameters shape derived state; rebuilt it from the training events")
                _refit_behavior(scratch)
            lists = replay.recommend_all(
                scratch,
                users,
                k_max,
                Progress(f"asking {name} for top-{k_max}", enabled=show_progress, unit="users"),
            )
            scored(name, lists)
            result.seconds[name] = time.perf_counter() - t0
            result.params[name] = params
    if baseline:
        t0 = time.perf_counter()
        scored(POPULAR, popular_lists(cut.train, users, k_max))
        result.seconds[POPULAR] = time.perf_counter() - t0
    result.scores = pd.concat(frames, ignore_index=True)[["model", "metric", "k", "value"]]
    result.seconds["total"] = time.perf_counter() - started
    _store(conn, result)
    return result


def _refit_behavior(conn: psycopg.Connection[Any]) -> None:
    """Behaviour vectors learned from the training events only (the live ones have seen the test)."""
    has = conn.execute("SELECT count(*) AS n FROM recsql.item_pairs").fetchone()
    if has and has["n"]:
        from recsql.embeddings.worker import Embedder

        Embedder(spaces=("behavior",)).refit_behavior_if_due(conn, force=True)


def _store(conn: psycopg.Connection[Any], result: Result) -> None:
    rows = result.scores
    with conn.transaction():
        conn.execute(
            "INSERT INTO recsql.evaluations (run_id, model, metric, k, value, split, data_fingerprint, params, users)"
            " SELECT %s, m, metric, k, v, %s, %s, p, %s"
            " FROM unnest(%s::text[], %s::text[], %s::int[], %s::float8[], %s::jsonb[]) AS x(m, metric, k, v, p)",
            (
                result.run_id,
                result.split,
                result.fingerprint,
                result.users,
                rows["model"].tolist(),
                rows["metric"].tolist(),
                rows["k"].astype(int).tolist(),
                rows["value"].astype(float).tolist(),
                [Jsonb(result.params.get(m)) for m in rows["model"]],
            ),
        )


def plot(result: Result, path: Path) -> None:
    """Bar charts of NDCG, HR and recall at each k, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = ["ndcg", "hr", "recall", "coverage"]
    fig, axes = plt.subplots(1, len(chosen), figsize=(4 * len(chosen), 3.6))
    for ax, metric in zip(axes, chosen, strict=True):
        table = result.scores[result.scores["metric"] == metric].pivot(
            index="k", columns="model", values="value"
        )
        table.plot.bar(ax=ax, rot=0)
        ax.set_title(f"{metric}@k")
        ax.set_xlabel("k")
        ax.legend(fontsize=8)
    fig.suptitle(f"recsql evaluate: {result.split}, {result.users:,} users", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
