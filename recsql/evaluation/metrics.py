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


def gains(test: pd.DataFrame) -> pd.DataFrame:
    """One row per (user_id, item_id) of the test period with its gain (the best event's)."""
    g = test.assign(gain=test["event_type"].map(GAINS).fillna(DEFAULT_GAIN).astype(float))
    best: pd.DataFrame = g.groupby(["user_id", "item_id"], as_index=False).agg(gain=("gain", "max"))
    return best


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
    relevant = {
        user: dict(zip(g["item_id"], g["gain"].astype(float), strict=True))
        for user, g in truth.groupby("user_id")
    }
    lists = recs.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].apply(list)
    rows = []
    for k in ks:
        discounts = 1.0 / np.log2(np.arange(2, k + 2))
        hr = prec = rec = ndcg = ap = rr = 0.0
        shown: set[str] = set()
        info_sum, info_n = 0.0, 0
        for user in users:
            rel = relevant[user]
            top = lists.get(user, [])[:k]
            shown.update(top)
            for item in top:
                info_sum += -math.log2(max(float(popularity.get(item, 1)), 1.0) / max(n_train_users, 1))
                info_n += 1
            hits = [item in rel for item in top]
            n_hits = sum(hits)
            hr += n_hits > 0
            prec += n_hits / k
            rec += n_hits / len(rel)
            g = np.array([rel.get(item, 0.0) for item in top] + [0.0] * (k - len(top)))
            ideal = np.sort(np.array(list(rel.values())))[::-1][:k]
            idcg = float(ideal @ discounts[: len(ideal)])
            ndcg += float(g @ discounts) / idcg if idcg > 0 else 0.0
            precisions = [sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h]
            ap += sum(precisions) / min(len(rel), k)
            first = next((i for i, h in enumerate(hits) if h), None)
            rr += 1.0 / (first + 1) if first is not None else 0.0
        n = len(users)
        values = {
            "hr": hr / n,
            "precision": prec / n,
            "recall": rec / n,
            "ndcg": ndcg / n,
            "map": ap / n,
            "mrr": rr / n,
            "coverage": len(shown) / max(catalog_size, 1),
            "novelty": info_sum / info_n if info_n else 0.0,
        }
        rows += [{"metric": m, "k": k, "value": values[m]} for m in METRICS]
    return pd.DataFrame(rows)
