"""Splits: who is tested on what, and items held out of training (cold start)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from recsql.errors import BadInput
from recsql.evaluation import split

START = datetime(2026, 1, 1, tzinfo=UTC)


def _events(histories: dict[str, list[str]]) -> pd.DataFrame:
    rows, seq = [], 0
    for user, items in histories.items():
        for n, item in enumerate(items):
            rows.append((f"e{seq}", user, item, "view", None, START + timedelta(minutes=n), seq))
            seq += 1
    return pd.DataFrame(rows, columns=split.COLUMNS)


def test_holdout_last_rounds_up_and_keeps_one_training_event():
    events = _events(
        {
            "u21": [f"i{n}" for n in range(21)],  # ceil(0.2 * 21) = 5 held out
            "u2": ["a", "b"],  # ceil(0.4) = 1: tested on its last event
            "u1": ["a"],  # nothing to learn from: training only
        }
    )
    cut = split.holdout_last(events, 0.2)
    held = cut.test.groupby("user_id")["item_id"].apply(list).to_dict()
    assert held == {"u21": [f"i{n}" for n in range(16, 21)], "u2": ["b"]}
    assert set(cut.train[cut.train["user_id"] == "u1"]["item_id"]) == {"a"}
    assert len(cut.train) + len(cut.test) == len(events)


def test_cold_items_are_deterministic_and_sized():
    events = _events({"u": [f"i{n}" for n in range(40)]})
    cold = split.cold_items(events, 0.1, seed=7)
    assert len(cold) == 4 and cold == split.cold_items(events, 0.1, seed=7)
    assert cold != split.cold_items(events, 0.1, seed=8)
    with pytest.raises(BadInput, match="between 0 and 1"):
        split.cold_items(events, 1.0, seed=7)


def test_held_out_items_leave_training_and_alone_count_in_the_test():
    events = _events({"u": ["a", "x", "b", "c", "x2", "d"], "v": ["x", "a", "b", "x2"], "w": ["x", "x2"]})
    base = split.holdout_last(events, 0.5)  # u: c, x2, d; v: b, x2; w: x2
    cut = split.hold_out_items(base, {"x", "x2"})
    assert not cut.train["item_id"].isin({"x", "x2"}).any()
    assert cut.description == "holdout-last:0.5+cold-items:2"
    truth = split.test_truth(cut)
    # w had only cold items in training, so w is unknown to the model and not tested.
    assert sorted(zip(truth["user_id"], truth["item_id"], strict=True)) == [("u", "x2"), ("v", "x2")]
    assert len(split.test_truth(base)) == 6
