"""Splitting the event log into what a model learns from and what it is judged on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from recsql.errors import BadInput

COLUMNS = ["event_id", "user_id", "item_id", "event_type", "value", "ts", "seq"]


@dataclass
class Split:
    """Training events, test events, and how they were cut."""

    train: pd.DataFrame
    test: pd.DataFrame
    description: str
    fingerprint: str
    # When set, only test interactions with these items count (items held out of training).
    only_items: frozenset[str] | None = None


def load_events(conn: psycopg.Connection[Any]) -> pd.DataFrame:
    """The whole event log in replay order (streamed with COPY)."""
    rows: list[tuple[Any, ...]] = []
    with conn.cursor().copy(
        "COPY (SELECT event_id, user_id, item_id, event_type, value, ts, seq FROM recsql.events"
        " ORDER BY xid, seq) TO STDOUT"
    ) as copy:
        copy.set_types(["text", "text", "text", "text", "float8", "timestamptz", "int8"])
        rows.extend(copy.rows())
    return pd.DataFrame(rows, columns=COLUMNS)


def fingerprint(events: pd.DataFrame) -> str:
    """Identifies the data: the same events give the same fingerprint."""
    digest = hashlib.sha256()
    for chunk_start in range(0, len(events), 100_000):
        chunk = events.iloc[chunk_start : chunk_start + 100_000]
        digest.update("\n".join(chunk["event_id"].astype(str)).encode())
    return f"{len(events)}:{digest.hexdigest()[:16]}"


def by_time(events: pd.DataFrame, at: datetime) -> Split:
    """Events before ``at`` train; events from ``at`` on are the test."""
    if at.tzinfo is None:
        raise BadInput("the split time needs a time zone, e.g. 2026-11-01T00:00:00Z", code="invalid_split")
    train = events[events["ts"] < at]
    test = events[events["ts"] >= at]
    _check(train, test, f"time:{at.isoformat()}")
    return Split(train, test, f"time:{at.isoformat()}", fingerprint(events))


def holdout_last(events: pd.DataFrame, fraction: float) -> Split:
    """Each user's last ``fraction`` of events (by time, then arrival) is the test.

    A user with n >= 2 events holds out ceil(fraction * n) of them, at most n - 1: everyone with
    a history to learn from is tested on at least one event.
    """
    if not 0 < fraction < 1:
        raise BadInput(f"--holdout-last must be between 0 and 1, got {fraction}", code="invalid_split")
    ordered = events.sort_values(["user_id", "ts", "seq"], kind="stable")
    position = ordered.groupby("user_id").cumcount()
    size = ordered.groupby("user_id")["seq"].transform("size")
    held = np.minimum(np.ceil(fraction * size), size - 1)
    is_test = position >= size - held
    train, test = ordered[~is_test].sort_values("seq"), ordered[is_test].sort_values("seq")
    _check(train, test, f"holdout-last:{fraction}")
    return Split(train, test, f"holdout-last:{fraction}", fingerprint(events))


def cold_items(events: pd.DataFrame, fraction: float, seed: int) -> frozenset[str]:
    """A deterministic ``fraction`` of the items in ``events`` (the same for the same data and seed)."""
    if not 0 < fraction < 1:
        raise BadInput(
            f"the cold-item fraction must be between 0 and 1, got {fraction}", code="invalid_split"
        )
    items = pd.Series(sorted(events["item_id"].unique()))
    return frozenset(items.sample(round(fraction * len(items)), random_state=seed))


def hold_out_items(cut: Split, items: Iterable[str]) -> Split:
    """``cut`` with every training event on ``items`` dropped; only test interactions with them count.

    This is cold start: items the model never saw an event for, judged on whether lists show them.
    """
    cold = frozenset(items)
    train = cut.train[~cut.train["item_id"].isin(cold)]
    description = f"{cut.description}+cold-items:{len(cold)}"
    _check(train, cut.test, description)
    return Split(train, cut.test, description, cut.fingerprint, only_items=cold)


def _check(train: pd.DataFrame, test: pd.DataFrame, what: str) -> None:
    if train.empty or test.empty:
        raise BadInput(
            f"split {what} leaves {len(train)} training and {len(test)} test events; both must be non-empty",
            code="invalid_split",
        )


def test_truth(split: Split) -> pd.DataFrame:
    """Test interactions with items the user had not touched in training (what a list can add),
    restricted to ``only_items`` when the split has them."""
    seen = split.train[["user_id", "item_id"]].drop_duplicates()
    known_users = set(split.train["user_id"])
    test = split.test[split.test["user_id"].isin(known_users)]
    if split.only_items is not None:
        test = test[test["item_id"].isin(split.only_items)]
    merged = test.merge(seen, on=["user_id", "item_id"], how="left", indicator=True)
    return merged[merged["_merge"] == "left_only"].drop(columns="_merge")
