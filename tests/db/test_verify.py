from click.testing import CliRunner

from recsql import api, db, verify
from recsql.cli import main


def test_verify_passes_on_a_migrated_database_with_consistent_state(db_url, conn):
    api.track(conn, "u1", "a", "view")
    api.track(conn, "u1", "b", "view")
    report = verify.check(db_url, state=True)
    assert report.ok, report.problems
    assert any("item_pairs: 1 row equal to a rebuild" in n for n in report.notes)
    assert any("user_windows: 1 stored windows equal to a rebuild" in n for n in report.notes)
    # The check folded and rebuilt inside a rolled-back transaction: nothing changed.
    assert conn.execute("SELECT pending_events FROM recsql.fold_status").fetchone()["pending_events"] == 2


def test_verify_reports_missing_objects_and_drifted_state(db_url, conn, monkeypatch):
    api.track(conn, "u1", "a", "view")
    api.flush(conn)
    conn.execute("UPDATE recsql.item_stats SET n_events = n_events + 1")
    report = verify.check(db_url, state=True)
    assert report.problems == ["recsql.item_stats differs from a rebuild (1 rows vs 1); run `recsql rebuild`"]
    conn.execute("UPDATE recsql.item_stats SET n_events = n_events - 1")
    conn.execute("UPDATE recsql.user_windows SET items = items || items")
    report = verify.check(db_url, state=True)
    assert report.problems == ["recsql.user_windows has 1 row(s) a rebuild does not; run `recsql rebuild`"]
    conn.execute("DROP FUNCTION recsql.explain(text, text)")
    monkeypatch.setenv("RECSQL_DATABASE_URL", db_url)
    monkeypatch.setattr(db, "_resolved_url", None)
    result = CliRunner().invoke(main, ["db", "verify"])
    assert result.exit_code == 1
    assert "missing function recsql.explain" in result.output
