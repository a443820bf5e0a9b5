"""`recsql evaluate`: replay the events before a split into a scratch database, ask every test user
for top-k, score the lists against what they did after the split, for the candidate model, the
active model and the popularity baseline side by side. Results go to recsql.evaluations.

The pieces are public so that a benchmark measures through the same path: ``cut_events`` (the
split), ``plan`` (test users and what counts as relevant), ``run`` (replay, ask, score; recsql
parameter sets as ``Candidate`` and any other recommender as ``Lists``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
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

# A recommender computed outside recsql: (split, test users, k) -> top-k lists (user_id, item_id,
# rank from 1) learned from split.train alone.
Lists = Callable[[split.Split, list[str], int], pd.DataFrame]


@dataclass(frozen=True)
class Candidate:
    """A parameter set to replay and ask; ``around`` (optional) wraps its lists in a temporary change
    of the scratch database, e.g. hiding items, and must undo it on exit."""

    name: str
    params: dict[str, Any]
    around: Callable[[psycopg.Connection[Any]], AbstractContextManager[object]] | None = None


@dataclass
class Plan:
    """What every model is judged on: the split, the test users and the gain of each relevant item."""

    cut: split.Split
    truth: pd.DataFrame  # user_id, item_id, gain
    users: list[str]
    catalog_size: int
    popularity: pd.Series  # item_id -> training users
    n_train_users: int

    def score(self, lists: pd.DataFrame, ks: Sequence[int] = metrics.KS) -> pd.DataFrame:
        """Rows (metric, k, value) of top-k ``lists`` on this plan's test users."""
        return metrics.score(
            lists,
            self.truth,
            catalog_size=self.catalog_size,
            popularity=self.popularity,
            n_train_users=self.n_train_users,
            ks=ks,
        )


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
    lists: dict[str, pd.DataFrame] = field(default_factory=dict)  # only with run(keep_lists=True)

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


def popular_lists(cut: split.Split, users: list[str], k: int) -> pd.DataFrame:
    """Most popular training items (by distinct users) that the user has not touched."""
    train = cut.train
    counts = train.groupby("item_id")["user_id"].nunique().sort_values(ascending=False, kind="stable")
    seen = train.groupby("user_id")["item_id"].apply(set)
    longest = int(seen.map(len).max()) if len(seen) else 0
    ranked = list(counts.index[: k + longest])
    rows = []
    for user in users:
        mine = seen.get(user, set())
        picks = [i for i in ranked if i not in mine][:k]
        rows += [(user, item, rank) for rank, item in enumerate(picks, 1)]
    return pd.DataFrame(rows, columns=metrics.LIST_COLUMNS)


def cut_events(
    events: pd.DataFrame, *, split_at: datetime | None = None, holdout_last: float | None = None
) -> split.Split:
    """Split the log by time (``split_at``) or per user (``holdout_last``): exactly one of them."""
    if (split_at is None) == (holdout_last is None):
        raise BadInput("give exactly one of --split TIME and --holdout-last FRACTION", code="invalid_split")
    if events.empty:
        raise BadInput("the event log is empty: nothing to evaluate", code="no_events")
    if split_at is not None:
        return split.by_time(events, split_at)
    return split.holdout_last(events, holdout_last or 0)


def plan(conn: psycopg.Connection[Any], cut: split.Split, *, max_users: int | None = None) -> Plan:
    """Test users (all, or a deterministic sample of ``max_users``) and their relevant items."""
    truth = metrics.gains(split.test_truth(cut))
    users = sorted(truth["user_id"].unique())
    if max_users is not None and len(users) > max_users:
        users = sorted(pd.Series(users).sample(max_users, random_state=0))  # deterministic sample
        truth = truth[truth["user_id"].isin(set(users))]
    if not users:
        raise BadInput(
            f"split {cut.description} leaves no user with new items after it", code="invalid_split"
        )
    items = conn.execute("SELECT count(*) AS n FROM recsql.items").fetchone()
    # Items reach the catalog when folded; count those only in the log too.
    in_log = pd.concat([cut.train["item_id"], cut.test["item_id"]]).nunique()
    return Plan(
        cut,
        truth,
        users,
        catalog_size=max(int(items["n"]) if items else 0, in_log),
        popularity=cut.train.groupby("item_id")["user_id"].nunique(),
        n_train_users=cut.train["user_id"].nunique(),
    )


def run(
    conn: psycopg.Connection[Any],
    source_url: str,
    the_plan: Plan,
    candidates: Sequence[Candidate],
    *,
    external: Mapping[str, Lists] | None = None,
    prototypes: Sequence[str] = (),
    ks: Sequence[int] = metrics.KS,
    show_progress: bool = True,
    keep_lists: bool = False,
) -> Result:
    """Replay the plan's training events once into a scratch database (catalog and text vectors from
    ``conn``, ``prototypes`` SQL run after migrating), ask each candidate in turn for top-k, compute
    each ``external`` recommender's lists, and score them all with the same metrics."""
    note = Progress("evaluate", enabled=show_progress).note
    cut, users = the_plan.cut, the_plan.users
    note(
        f"split {cut.description}: {len(cut.train):,} training events, {len(cut.test):,} test events,"
        f" {len(users):,} test users (data {cut.fingerprint})"
    )
    started = time.perf_counter()
    k_max = max(ks)
    result = Result(str(uuid.uuid4()), cut.description, cut.fingerprint, len(users), pd.DataFrame())
    frames = []

    def scored(name: str, lists: pd.DataFrame, since: float) -> None:
        frames.append(the_plan.score(lists, ks).assign(model=name))
        result.seconds[name] = time.perf_counter() - since
        if keep_lists:
            result.lists[name] = lists

    if candidates:
        with (
            replay.scratch_database(source_url, prototypes) as scratch_url,
            db.connect(scratch_url) as scratch,
        ):
            t0 = time.perf_counter()
            replay.copy_catalog(conn, scratch)
            replay.apply_params(scratch, candidates[0].params)
            replay.load_events(
                scratch,
                cut.train,
                label=f"replaying training events for {candidates[0].name}",
                show_progress=show_progress,
            )
            note("refreshing neighbour lists and fitting behaviour vectors on the training events")
            api.flush(scratch)
            scratch.execute("ANALYZE")
            _refit_behavior(scratch)
            result.seconds["replay"] = time.perf_counter() - t0
            for candidate in candidates:
                t0 = time.perf_counter()
                if replay.apply_params(scratch, candidate.params) == "rebuilt":
                    note(
                        f"{candidate.name}: its parameters shape derived state; rebuilt it from the training events"
                    )
                    scratch.execute("ANALYZE")
                    _refit_behavior(scratch)
                around = candidate.around(scratch) if candidate.around else nullcontext()
                with around:
                    lists = replay.recommend_all(
                        scratch,
                        users,
                        k_max,
                        label=f"asking {candidate.name} for top-{k_max}",
                        show_progress=show_progress,
                    )
                scored(candidate.name, lists, t0)
                result.params[candidate.name] = candidate.params
    for name, recommender in (external or {}).items():
        t0 = time.perf_counter()
        scored(name, recommender(cut, users, k_max), t0)
    if not frames:
        raise BadInput("nothing to evaluate: give at least one model or recommender", code="invalid_split")
    result.scores = pd.concat(frames, ignore_index=True)[["model", "metric", "k", "value"]]
    result.seconds["total"] = time.perf_counter() - started
    return result


def evaluate(
    conn: psycopg.Connection[Any],
    source_url: str,
    *,
    model: str | None = None,
    models: Sequence[str] = (),
    split_at: datetime | None = None,
    holdout_last: float | None = None,
    baseline: bool = True,
    ks: tuple[int, ...] = metrics.KS,
    max_users: int | None = None,
    show_progress: bool = True,
) -> Result:
    """Evaluate ``model`` (and ``models``) beside the active one against the log behind ``conn``;
    store the scores in recsql.evaluations."""
    started = time.perf_counter()
    active_name, active_params = active_model(conn)
    candidates = [Candidate(active_name, active_params)]
    for name in dict.fromkeys([*([model] if model else []), *models]):
        if name != active_name:
            candidates.append(Candidate(name, model_params(conn, name)))
    cut = cut_events(split.load_events(conn), split_at=split_at, holdout_last=holdout_last)
    the_plan = plan(conn, cut, max_users=max_users)
    result = run(
        conn,
        source_url,
        the_plan,
        candidates,
        external={POPULAR: popular_lists} if baseline else None,
        ks=ks,
        show_progress=show_progress,
    )
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
