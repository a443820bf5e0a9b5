"""Top-k ranking metrics over recommendation lists and held-out interactions (pandas, no database).

Relevance is graded: what a user did with an item in the test period gives the item a gain
(GAINS: purchase 3, add to cart 2, anything else 1; the highest counts). HR, precision, recall,
MAP and MRR treat every item with a gain as relevant; NDCG uses the gains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

GAINS = {"purchase": 3.0, "add_to_cart": 2.0}
DEFAULT_GAIN = 1.0
KS = (5, 10, 20)
METRICS = ("hr", "precision", "recall", "ndcg", "map", "mrr", "coverage", "novelty")
# The metrics that are a mean over users (per_user gives each user's value).
USER_METRICS = ("hr", "precision", "recall", "ndcg", "map", "mrr")
LIST_COLUMNS = ["user_id", "item_id", "rank"]


def gains(test: pd.DataFrame) -> pd.DataFrame:
    """One row per (user_id, item_id) of the test period with its gain (the best event's)."""
    g = test.assign(gain=test["event_type"].map(GAINS).fillna(DEFAULT_GAIN).astype(float))
    best: pd.DataFrame = g.groupby(["user_id", "item_id"], as_index=False).agg(gain=("gain", "max"))
    return best


def _lists(recs: pd.DataFrame) -> pd.Series:
    return recs.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].apply(list)


def _relevant(truth: pd.DataFrame) -> dict[str, dict[str, float]]:
    return {
        str(user): dict(zip(g["item_id"], g["gain"].astype(float), strict=True))
        for user, g in truth.groupby("user_id")
    }


def per_user(recs: pd.DataFrame, truth: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each test user's HR, precision, recall, NDCG, AP and RR at ``k``: one row per user in ``truth``
    (sorted by user), with an empty list for users ``recs`` has none for."""
    users = sorted(truth["user_id"].unique())
    if not users:
        raise ValueError("no test users: nothing to evaluate")
    relevant = _relevant(truth)
    lists = _lists(recs)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    rows = []
    for user in users:
        rel = relevant[user]
        top = lists.get(user, [])[:k]
        hits = [item in rel for item in top]
        n_hits = sum(hits)
        g = np.array([rel.get(item, 0.0) for item in top] + [0.0] * (k - len(top)))
        ideal = np.sort(np.array(list(rel.values())))[::-1][:k]
        idcg = float(ideal @ discounts[: len(ideal)])
        precisions = [sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h]
        first = next((i for i, h in enumerate(hits) if h), None)
        rows.append(
            (
                user,
                float(n_hits > 0),
                n_hits / k,
                n_hits / len(rel),
                float(g @ discounts) / idcg if idcg > 0 else 0.0,
                sum(precisions) / min(len(rel), k),
                1.0 / (first + 1) if first is not None else 0.0,
            )
        )
    return pd.DataFrame(rows, columns=["user_id", *USER_METRICS])


def score(
    recs: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    catalog_size: int,
    popularity: pd.Series,
    n_train_users: int,
    ks: Sequence[int] = KS,
) -> pd.DataFrame:
    """Metrics of ``recs`` (user_id, item_id, rank from 1) against ``truth`` (user_id, item_id, gain).

    Every user in ``truth`` counts, with an empty list if ``recs`` has none for them. Returns rows
    (metric, k, value). ``popularity`` maps item -> training users, for novelty
    (mean -log2 of the share of training users who had the item; unseen items count as 1 user).
    """
    users = truth["user_id"].unique()
    if len(users) == 0:
        raise ValueError("no test users: nothing to evaluate")
    lists = _lists(recs)
    rows = []
    for k in ks:
        means = per_user(recs, truth, k)[list(USER_METRICS)].mean()
        shown: set[str] = set()
        info_sum, info_n = 0.0, 0
        for user in users:
            top = lists.get(user, [])[:k]
            shown.update(top)
            for item in top:
                info_sum += -math.log2(max(float(popularity.get(item, 1)), 1.0) / max(n_train_users, 1))
                info_n += 1
        values = {m: float(means[m]) for m in USER_METRICS} | {
            "coverage": len(shown) / max(catalog_size, 1),
            "novelty": info_sum / info_n if info_n else 0.0,
        }
        rows += [{"metric": m, "k": k, "value": values[m]} for m in METRICS]
    return pd.DataFrame(rows)
