"""Ranking metrics against values worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from recsql.evaluation import metrics


def _score(recs, truth, **kw):
    s = metrics.score(
        pd.DataFrame(recs, columns=["user_id", "item_id", "rank"]),
        pd.DataFrame(truth, columns=["user_id", "item_id", "gain"]),
        catalog_size=kw.get("catalog_size", 10),
        popularity=pd.Series(kw.get("popularity", {})),
        n_train_users=kw.get("n_train_users", 4),
        ks=kw.get("ks", (2,)),
    )
    return {(r.metric, r.k): r.value for r in s.itertuples()}


def test_one_user_by_hand():
    # u1 gets [a, b]; a is irrelevant, b has gain 3; c (gain 1) is relevant but not shown.
    v = _score(
        [("u1", "a", 1), ("u1", "b", 2)], [("u1", "b", 3.0), ("u1", "c", 1.0)], popularity={"a": 2, "b": 1}
    )
    assert v[("hr", 2)] == 1.0
    assert v[("precision", 2)] == 0.5
    assert v[("recall", 2)] == 0.5
    dcg = 3 / math.log2(3)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert v[("ndcg", 2)] == pytest.approx(dcg / idcg)
    assert v[("map", 2)] == pytest.approx((1 / 2) / 2)
    assert v[("mrr", 2)] == pytest.approx(1 / 2)
    assert v[("coverage", 2)] == pytest.approx(2 / 10)
    assert v[("novelty", 2)] == pytest.approx((-math.log2(2 / 4) - math.log2(1 / 4)) / 2)


def test_users_without_a_list_count_as_misses():
    v = _score([("u1", "b", 1)], [("u1", "b", 1.0), ("u2", "x", 1.0)], ks=(1,))
    assert v[("hr", 1)] == 0.5 and v[("ndcg", 1)] == 0.5 and v[("mrr", 1)] == 0.5


def test_gains_keep_the_best_event():
    test = pd.DataFrame(
        {"user_id": ["u", "u", "u"], "item_id": ["a", "a", "b"], "event_type": ["view", "purchase", "click"]}
    )
    g = metrics.gains(test).set_index("item_id")["gain"].to_dict()
    assert g == {"a": 3.0, "b": 1.0}


def test_no_test_users_is_an_error():
    with pytest.raises(ValueError, match="no test users"):
        _score([], [])


def test_per_user_values_average_to_the_scores():
    recs = pd.DataFrame(
        [("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 1), ("u2", "a", 2)], columns=metrics.LIST_COLUMNS
    )
    truth = pd.DataFrame(
        [("u1", "b", 1.0), ("u2", "c", 2.0), ("u3", "a", 1.0)], columns=["user_id", "item_id", "gain"]
    )
    rows = metrics.per_user(recs, truth, 2).set_index("user_id")
    assert list(rows.index) == ["u1", "u2", "u3"]
    assert rows.loc["u1", "ndcg"] == pytest.approx(1 / math.log2(3))
    assert rows.loc["u2", "ndcg"] == 1.0 and rows.loc["u2", "mrr"] == 1.0
    assert rows.loc["u3"].sum() == 0.0  # no list: a miss on every metric
    scores = _score(
        list(recs.itertuples(index=False, name=None)), list(truth.itertuples(index=False, name=None))
    )
    for metric in metrics.USER_METRICS:
        assert scores[(metric, 2)] == pytest.approx(rows[metric].mean())
