"""`recsql evaluate` on a stream with a known signal: users who view A_i go on to buy B_i."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recsql import cli, db, load
from recsql.errors import BadInput
from recsql.evaluation import run


def _signal_stream(users=160, pairs=12, seed=5):
    """Each user, twice: views a random item, then A_i, then buys B_i; time runs forward.

    Holding out each user's last event (10%) tests the second B: its A is in the training data,
    and other users' first rounds teach that A_i goes with B_i.
    """
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    chosen = [rng.choice(pairs, size=2, replace=False) for _ in range(users)]
    rows, t = [], 0
    for round_ in range(2):  # everyone's first round, then everyone's second
        for u in range(users):
            i = chosen[u][round_]
            rows.append((f"u{u}", f"n{rng.integers(0, 40)}", "view", start + timedelta(minutes=t)))
            rows.append((f"u{u}", f"a{i}", "view", start + timedelta(minutes=t + 1)))
            rows.append((f"u{u}", f"b{i}", "purchase", start + timedelta(minutes=t + 2)))
            t += 3
    return [(user, item, kind, ts, None, f"e{n}", None) for n, (user, item, kind, ts) in enumerate(rows)]


@pytest.fixture
def shop(db_url, conn, monkeypatch):
    monkeypatch.setenv("RECSQL_DATABASE_URL", db_url)
    monkeypatch.setattr(db, "_resolved_url", None)
    load.copy_events(conn, _signal_stream())
    return db_url


def test_metrics_find_the_signal_and_a_broken_model_scores_worse(shop, conn):
    conn.execute(
        "INSERT INTO recsql.models (name, params) SELECT 'broken', recsql.check_params(%s)",
        (
            '{"weights": {"view": 0, "purchase": 0, "add_to_cart": 0, "click": 0, "rating": 0,'
            ' "review": 0, "wishlist": 0, "remove_from_cart": 0}}',
        ),
    )
    result = run.evaluate(conn, shop, model="broken", holdout_last=0.1, show_progress=False)
    ndcg = {m: result.value(m, "ndcg", 10) for m in ("default", "broken", "popular")}
    hr = result.value("default", "hr", 10)
    assert hr > 0.6, result.table()  # B_i follows A_i for every test user
    assert ndcg["default"] > 2 * ndcg["popular"]
    assert ndcg["broken"] < 0.5 * ndcg["default"]
    assert 0 < result.value("default", "coverage", 10) <= 1
    stored = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT model) AS models, min(split) AS split FROM recsql.evaluations"
        " WHERE run_id = %s",
        (result.run_id,),
    ).fetchone()
    assert stored["models"] == 3 and stored["n"] == 3 * 8 * 3 and stored["split"] == "holdout-last:0.1"
    # The live database is untouched: its settings and state are what they were.
    assert (
        conn.execute("SELECT count(*) AS n FROM recsql.item_pairs").fetchone()["n"] == 0
    )  # never folded here


def test_evaluation_is_deterministic_and_reports_json(shop):
    runner = CliRunner()
    outs = []
    for _ in range(2):
        res = runner.invoke(cli.main, ["evaluate", "--holdout-last", "0.1", "--format", "json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        outs.append((doc["data_fingerprint"], doc["scores"]))
    assert outs[0] == outs[1]
    assert {s["metric"] for s in outs[0][1]} == {
        "hr",
        "precision",
        "recall",
        "ndcg",
        "map",
        "mrr",
        "coverage",
        "novelty",
    }
    assert {s["k"] for s in outs[0][1]} == {5, 10, 20}


def test_time_split_table_and_plot(shop, tmp_path):
    chart = tmp_path / "eval.png"
    res = CliRunner().invoke(
        cli.main, ["evaluate", "--split", "2026-01-01T08:00:00+00:00", "--plot", str(chart)]
    )
    assert res.exit_code == 0, res.output
    assert "ndcg" in res.stdout and "popular" in res.stdout and "default" in res.stdout
    assert chart.stat().st_size > 5000 and chart.read_bytes()[:4] == b"\x89PNG"


def test_bad_splits_are_refused(shop, conn):
    with pytest.raises(BadInput, match="exactly one"):
        run.evaluate(conn, shop, show_progress=False)
    with pytest.raises(BadInput, match="between 0 and 1"):
        run.evaluate(conn, shop, holdout_last=1.5, show_progress=False)
    with pytest.raises(BadInput, match="non-empty"):
        run.evaluate(conn, shop, split_at=datetime(2020, 1, 1, tzinfo=UTC), show_progress=False)
    res = CliRunner().invoke(cli.main, ["evaluate", "--split", "yesterday"])
    assert res.exit_code == 1 and "ISO 8601" in res.output


def test_models_create_validates_and_lists(shop, conn):
    runner = CliRunner()
    ok = runner.invoke(
        cli.main, ["models", "create", "wide", "--set", "cooc_window=20", "--set", "weights.view=2"]
    )
    assert ok.exit_code == 0, ok.output
    params = conn.execute("SELECT params FROM recsql.models WHERE name = 'wide'").fetchone()["params"]
    assert (
        params["cooc_window"] == 20 and params["weights"]["view"] == 2 and params["weights"]["purchase"] == 5
    )
    bad = runner.invoke(cli.main, ["models", "create", "bad", "--set", "cooc_window=500"])
    assert bad.exit_code == 1 and "cooc_window = 500 is out of range" in bad.output
    typo = runner.invoke(cli.main, ["models", "create", "typo", "--set", "window=5"])
    assert typo.exit_code == 1 and 'unknown model parameter "window"' in typo.output
    again = runner.invoke(cli.main, ["models", "create", "wide"])
    assert again.exit_code == 1 and "immutable" in again.output
    listed = runner.invoke(cli.main, ["models", "list", "--format", "json"])
    names = {m["name"]: m for m in json.loads(listed.stdout)}
    assert names["default"]["status"] == "active" and names["wide"]["status"] == "candidate"
    assert "cooc_window=20" in names["wide"]["differs"]


def test_promotion_is_gated_and_can_be_rolled_back(shop, conn):
    runner = CliRunner()
    conn.execute(
        "INSERT INTO recsql.models (name, params) VALUES ('short', recsql.check_params('{\"history_length\": 1}')),"
        " ('broken', recsql.check_params(%s))",
        (
            '{"weights": {"view": 0, "purchase": 0, "add_to_cart": 0, "click": 0, "rating": 0,'
            ' "review": 0, "wishlist": 0, "remove_from_cart": 0}}',
        ),
    )
    unevaluated = runner.invoke(cli.main, ["models", "promote", "broken"])
    assert unevaluated.exit_code == 1 and "recsql evaluate --model broken" in unevaluated.output
    run.evaluate(conn, shop, model="broken", holdout_last=0.1, show_progress=False)
    refused = runner.invoke(cli.main, ["models", "promote", "broken"])
    assert refused.exit_code == 1 and "refused: NDCG@10 0.0000 for broken against" in refused.output
    assert (
        conn.execute("SELECT name FROM recsql.models WHERE status = 'active'").fetchone()["name"] == "default"
    )

    forced = runner.invoke(cli.main, ["models", "promote", "broken", "--force"])
    assert forced.exit_code == 0, forced.output
    assert "broken is active (swapped)" in forced.stdout  # weights shape derived state: built, then swapped
    weights = {r["name"]: r["weight"] for r in conn.execute("SELECT name, weight FROM recsql.event_types")}
    assert weights["purchase"] == 0
    back = runner.invoke(cli.main, ["models", "rollback"])
    assert back.exit_code == 0 and "default is active" in back.stdout
    assert (
        conn.execute("SELECT weight FROM recsql.event_types WHERE name = 'purchase'").fetchone()["weight"]
        == 5
    )
    statuses = {r["name"]: r["status"] for r in conn.execute("SELECT name, status FROM recsql.models")}
    assert statuses == {"default": "active", "broken": "retired", "short": "candidate"}


def test_readers_never_fail_nor_see_a_mix_while_promoting(shop, conn):
    import threading

    import psycopg

    from recsql import api

    api.flush(conn)
    conn.execute(
        "INSERT INTO recsql.models (name, params) VALUES ('next', recsql.check_params(%s))",
        ('{"history_length": 30, "cooc_window": 5, "weights": {"purchase": 4}}',),
    )
    seen, errors, stop = set(), [], threading.Event()

    def read() -> None:
        with psycopg.connect(shop, autocommit=True) as reader:
            while not stop.is_set():
                try:
                    row = reader.execute(
                        "SELECT (SELECT history_length FROM recsql.settings),"
                        " (SELECT cooc_window FROM recsql.settings),"
                        " (SELECT weight FROM recsql.event_types WHERE name = 'purchase'),"
                        " (SELECT count(*) FROM recsql.recommend('u3', 5))"
                    ).fetchone()
                    assert row is not None
                    seen.add(row[:3])
                except psycopg.Error as exc:  # any failure is what this test is about
                    errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        time.sleep(0.3)
        res = CliRunner().invoke(cli.main, ["models", "promote", "next", "--force"])
        assert res.exit_code == 0, res.output
        time.sleep(0.3)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert seen == {(15, 10, 5.0), (30, 5, 4.0)}  # the old model or the new one, nothing in between


def test_external_lists_are_scored_on_the_same_plan(shop, conn):
    from recsql.evaluation import metrics, split

    cut = run.cut_events(split.load_events(conn), holdout_last=0.1)
    plan = run.plan(conn, cut)

    def oracle(cut: split.Split, users: list[str], k: int) -> pd.DataFrame:
        truth = plan.truth  # perfect lists: each user's own held-out items
        rows = [(u, i, r) for u, g in truth.groupby("user_id") for r, i in enumerate(g["item_id"], 1)]
        return pd.DataFrame(rows, columns=metrics.LIST_COLUMNS)

    result = run.run(conn, shop, plan, [], external={"oracle": oracle}, show_progress=False, keep_lists=True)
    assert result.value("oracle", "ndcg", 10) == 1.0 and result.value("oracle", "hr", 5) == 1.0
    assert set(result.lists) == {"oracle"} and result.users == len(plan.users)
    with pytest.raises(BadInput, match="nothing to evaluate"):
        run.run(conn, shop, plan, [], show_progress=False)


def test_prototype_sql_and_scratch_changes_reach_only_the_scratch_database(shop, conn):
    from contextlib import contextmanager

    from recsql.evaluation import split

    empty = (
        "CREATE OR REPLACE FUNCTION recsql.recommend(user_id text, k integer default 10, category text default null,"
        " in_stock_only boolean default false, exclude_purchased boolean default true,"
        " exclude_seen boolean default false) RETURNS TABLE (item_id text, score double precision, reason text)"
        " LANGUAGE sql STABLE AS $$ SELECT 'n0'::text, 1.0::double precision, 'prototype'::text LIMIT k $$"
    )
    cut = run.cut_events(split.load_events(conn), holdout_last=0.1)
    plan = run.plan(conn, cut)
    params = run.active_model(conn)[1]
    seen_hidden = []

    @contextmanager
    def hide_all(scratch):
        scratch.execute("UPDATE recsql.items SET hidden_at = now()")
        seen_hidden.append(
            scratch.execute("SELECT count(*) AS n FROM recsql.items WHERE hidden_at IS NULL").fetchone()["n"]
        )
        yield
        scratch.execute("UPDATE recsql.items SET hidden_at = NULL")

    normal = run.run(
        conn,
        shop,
        plan,
        [run.Candidate("real", params), run.Candidate("hidden", params, hide_all)],
        show_progress=False,
    )
    assert normal.value("real", "hr", 10) > 0.6 and normal.value("hidden", "hr", 10) == 0.0
    assert seen_hidden == [0] and normal.seconds["replay"] > 0
    proto = run.run(
        conn, shop, plan, [run.Candidate("proto", params)], prototypes=[empty], show_progress=False
    )
    assert proto.value("proto", "coverage", 10) == pytest.approx(1 / plan.catalog_size)
    # The live database keeps its own function and items.
    assert (
        conn.execute("SELECT count(*) AS n FROM recsql.items WHERE hidden_at IS NOT NULL").fetchone()["n"]
        == 0
    )
    assert (
        "prototype"
        not in conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'recommend'").fetchone()["prosrc"]
    )
    with pytest.raises(BadInput, match="prototype SQL #1 failed"):
        run.run(
            conn,
            shop,
            plan,
            [run.Candidate("bad", params)],
            prototypes=["SELECT nonsense("],
            show_progress=False,
        )


def test_several_candidates_from_the_command_line(shop, conn):
    for name, window in (("w5", 5), ("w20", 20)):
        conn.execute(
            "INSERT INTO recsql.models (name, params) SELECT %s, recsql.check_params(%s)",
            (name, json.dumps({"cooc_window": window})),
        )
    res = CliRunner().invoke(
        cli.main, ["evaluate", "--holdout-last", "0.1", "--model", "w5", "--model", "w20", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {s["model"] for s in doc["scores"]} == {"default", "w5", "w20", "popular"}
    assert {"replay", "default", "w5", "w20", "popular", "total"} <= set(doc["seconds"])
