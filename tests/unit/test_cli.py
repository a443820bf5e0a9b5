"""CLI behaviour that needs no database: help, configuration, clean errors."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from recsql import config, db
from recsql.cli import _print_rows, main


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "import", "rebuild", "recommend", "similar", "demo", "worker", "flush"):
        assert command in result.output
    db_help = CliRunner().invoke(main, ["db", "--help"])
    for command in ("upgrade", "url", "status", "stop", "psql"):
        assert command in db_help.output


def test_config_prefers_database_url(monkeypatch, tmp_path):
    monkeypatch.setenv(config.DATABASE_URL_ENV, "postgresql://x@/y")
    monkeypatch.setenv(config.HOME_ENV, str(tmp_path))
    cfg = config.load()
    assert (cfg.database_url, cfg.embedded, cfg.home) == ("postgresql://x@/y", False, tmp_path)


def test_config_defaults_to_embedded_home_in_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv(config.DATABASE_URL_ENV, raising=False)
    monkeypatch.delenv(config.HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = config.load()
    assert cfg.embedded and cfg.home == Path(tmp_path) / ".recsql"


def test_unreachable_database_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv(
        config.DATABASE_URL_ENV, f"postgresql://nobody@/nothing?host={tmp_path}&connect_timeout=2"
    )
    monkeypatch.setattr(db, "_resolved_url", None)
    result = CliRunner().invoke(main, ["recommend", "u1"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot connect to the database")
    assert "Traceback" not in result.output


def test_stop_refuses_external_database(monkeypatch):
    monkeypatch.setenv(config.DATABASE_URL_ENV, "postgresql://x@/y")
    result = CliRunner().invoke(main, ["db", "stop"])
    assert result.exit_code == 1
    assert "does not manage that server" in result.output


def test_table_output_aligns_columns(capsys):
    _print_rows([{"item_id": "a", "score": 0.5}, {"item_id": "bbbb", "score": 1.25}], "table")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["item_id  score", "a        0.5000", "bbbb     1.2500"]


def test_json_output_and_empty_table(capsys):
    _print_rows([{"item_id": "a", "score": 0.5}], "json")
    assert '"item_id": "a"' in capsys.readouterr().out
    _print_rows([], "table")
    assert capsys.readouterr().out == "(no results)\n"


def test_worker_refresh_is_passed_to_the_folder_and_checked(monkeypatch):
    import recsql.worker

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def folder(**kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(recsql.worker, "Folder", folder)
    result = CliRunner().invoke(main, ["worker", "--refresh", "2"])
    assert isinstance(result.exception, Stop)
    assert seen["refresh_s"] == 2.0
    bad = CliRunner().invoke(main, ["worker", "--refresh", "-1"])
    assert bad.exit_code == 2
    assert "--refresh" in bad.output
    assert not isinstance(bad.exception, Stop)
