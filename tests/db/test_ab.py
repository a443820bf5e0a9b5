"""Online A/B: traffic split by a stable hash, candidates served with their parameters, attribution."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from psycopg import sql

from recsql import api, cli, db, serving


@pytest.fixture
def models(conn, db_url, monkeypatch):
    monkeypatch.setenv("RECSQL_DATABASE_URL", db_url)
    monkeypatch.setattr(db, "_resolved_url", None)
    conn.execute(
        "INSERT INTO recsql.models (name, params) VALUES"
        " ('short', recsql.check_params('{\"history_length\": 1}')),"
        " ('blend', recsql.check_params('{\"embedding_weight\": 0.5}')),"
        " ('third', recsql.check_params('{\"history_half_life\": 2}')),"
        " ('wide', recsql.check_params('{\"cooc_window\": 30}'))"
    )
    return conn


def test_traffic_rules(models):
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["models", "traffic", "short", "0.3"])
    assert ok.exit_code == 0 and "short 30%, active model 70%" in ok.stdout
    state = runner.invoke(cli.main, ["models", "traffic", "wide", "0.1"])
    assert state.exit_code == 1 and "changes cooc_window (derived state)" in state.output
    assert runner.invoke(cli.main, ["models", "traffic", "blend", "0.8"]).exit_code == 1  # 110% in all
    assert runner.invoke(cli.main, ["models", "traffic", "blend", "0.2"]).exit_code == 0
    three = runner.invoke(cli.main, ["models", "traffic", "third", "0.1"])
    assert three.exit_code == 1 and "at most two" in three.output
    active = runner.invoke(cli.main, ["models", "traffic", "default", "0.1"])
    assert active.exit_code == 1 and "only a candidate" in active.output
    rows = models.execute("SELECT model, share FROM recsql.model_traffic ORDER BY model").fetchall()
    assert [(r["model"], r["share"]) for r in rows] == [("blend", 0.2), ("short", 0.3)]


def test_assignment_is_stable_and_follows_the_shares(models):
    models.execute("SELECT recsql.set_traffic('short', 0.3)")
    rows = models.execute(
        "SELECT recsql.assign_model('user-' || g) AS m, count(*) AS n FROM generate_series(1, 20000) g GROUP BY 1"
    ).fetchall()
    share = {r["m"]: r["n"] / 20000 for r in rows}
    assert set(share) == {"short", "default"}
    assert share["short"] == pytest.approx(0.3, abs=0.015)
    again = models.execute(
        "SELECT recsql.assign_model('user-17') = recsql.assign_model('user-17') AS same"
    ).fetchone()
    assert again["same"]


def test_candidate_users_are_served_with_its_parameters_and_logged(models):
    for user in ("s1", "s2", "s3"):
        for item in ("a", "b", "c", "d"):
            api.track(models, user, item, "view")
    api.flush(models)
    models.execute("SELECT recsql.set_traffic('short', 0.5)")
    users = [r["u"] for r in models.execute("SELECT 'v' || g AS u FROM generate_series(1, 40) g")]
    by_model: dict[str, list[str]] = {}
    for user in users:
        api.track(models, user, "a", "view")
        api.track(models, user, "d", "view")  # the most recent event
        served = serving.serve(models, "user", user_id=user, k=3)
        by_model.setdefault(served.model or "", []).append(user)
        reasons = {r["reason"] for r in served.items}
        if served.model == "short":
            assert reasons == {"similar to d"}  # history_length 1: only the last event counts
        else:
            assert "similar to a" in reasons or "similar to d" in reasons
    assert set(by_model) == {"short", "default"}
    logged = models.execute(
        "SELECT model, count(*) AS n FROM recsql.recommendation_log GROUP BY model"
    ).fetchall()
    assert {r["model"]: r["n"] for r in logged} == {m: len(u) for m, u in by_model.items()}
    # Outside the transaction that served a candidate, the settings are the active model's again.
    assert models.execute("SELECT current_setting('recsql.history_length', true) AS v").fetchone()["v"] in (
        None,
        "",
    )


def test_report_compares_candidates_with_the_active_model(models):
    models.execute("SELECT recsql.set_traffic('short', 0.5)")
    for n in range(200):
        served = serving.serve(models, "user", user_id=f"r{n}", k=1)
        clicks = 1 if served.model == "short" else (n % 4 == 0)
        if clicks:
            api.track(models, f"r{n}", "x", "click", recommendation_id=served.recommendation_id)
    res = CliRunner().invoke(cli.main, ["models", "report", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {r["model"]: r for r in json.loads(res.stdout)}
    assert rows["short"]["ctr"] == 1.0 and rows["default"]["active"] is True
    assert rows["short"]["ctr_diff"] > 0.5 and rows["short"]["ctr_p"] < 0.001


def test_a_candidate_with_its_own_state_is_served_from_it(models):
    import random

    rng = random.Random(4)
    for _ in range(600):
        api.track(models, f"p{rng.randrange(30)}", f"i{rng.randrange(40)}", rng.choice(["view", "purchase"]))
    api.flush(models)
    api.build_model_state(models, "wide")
    schema = str(api.model_state(models, "wide")["schema_name"])  # type: ignore[index]
    models.execute("SELECT recsql.set_traffic('wide', 0.5)")
    served_by: dict[str, int] = {}
    for n in range(30):
        user = f"p{n}"
        served = serving.serve(models, "user", user_id=user, k=5)
        served_by[served.model or ""] = served_by.get(served.model or "", 0) + 1
        source = schema if served.model == "wide" else "recsql"
        expected = models.execute(
            sql.SQL("SELECT item_id FROM {}.recommend(%s, 5)").format(sql.Identifier(source)), (user,)
        ).fetchall()
        assert [i["item_id"] for i in served.items] == [r["item_id"] for r in expected], served.model
    assert set(served_by) == {"wide", "default"}
