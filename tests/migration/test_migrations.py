"""The Alembic history builds exactly the database that sql/ describes, and unwinds to nothing."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg

from recsql import migrate
from tests.conftest import create_database, drop_database

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

CATALOG = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attnum, a.attcollation::regcollation::text
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'recsql'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 7""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'recsql'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'recsql' ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
               p.provolatile, md5(p.prosrc), obj_description(p.oid, 'pg_proc')
        FROM pg_proc p WHERE p.pronamespace = 'recsql'::regnamespace ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal AND tgrelid::regclass::text LIKE 'recsql.%' ORDER BY 1, 2""",
    "views": """
        SELECT viewname, md5(definition) FROM pg_views WHERE schemaname = 'recsql' ORDER BY 1""",
    "comments": """
        SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c
        WHERE c.relnamespace = 'recsql'::regnamespace ORDER BY 1""",
    "seed": """
        SELECT name, weight, forms_pairs, is_conversion, value_min, value_max FROM recsql.event_types ORDER BY 1""",
}


def catalog(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in CATALOG.items()}


def test_migrations_build_the_schema_of_sql_dir(server_url):
    names = [f"recsql_mig_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    from_sql, from_alembic = (create_database(server_url, n) for n in names)
    try:
        with psycopg.connect(from_sql, autocommit=True) as conn:
            for path in sorted(SQL_DIR.glob("*.sql")):
                conn.execute(path.read_text())
        migrate.upgrade(from_alembic)
        expected, actual = catalog(from_sql), catalog(from_alembic)
        for part in CATALOG:
            assert actual[part] == expected[part], f"{part} differ: run the migration for your sql/ change"
        assert len(expected["functions"]) > 20 and len(expected["triggers"]) >= 4
    finally:
        for n in names:
            drop_database(server_url, n)


def test_downgrade_to_base_and_up_again(server_url):
    name = f"recsql_mig_{uuid.uuid4().hex[:8]}"
    url = create_database(server_url, name)
    try:
        migrate.upgrade(url)
        assert migrate.current(url) == migrate.head()
        migrate.downgrade(url, "base")
        assert migrate.current(url) is None
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regnamespace('recsql')").fetchone() == (None,)
        migrate.upgrade(url)
        assert migrate.current(url) == migrate.head()
    finally:
        drop_database(server_url, name)


STATE_FUNCTIONS = """
    SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc)
    FROM pg_proc p WHERE p.pronamespace = %s::regnamespace ORDER BY 1, 2"""


STATE_INDEXES = """
    SELECT tablename, indexname, replace(indexdef, ' ON ' || schemaname || '.', ' ON .')
    FROM pg_indexes WHERE schemaname = %s AND tablename = ANY (recsql._state_tables()) ORDER BY 1, 2"""


STATE_COLUMNS = """
    SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    WHERE c.relnamespace = %s::regnamespace AND c.relname = ANY (recsql._state_tables())
      AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY c.relname, a.attnum"""


def _state_copies_are_current(conn: psycopg.Connection[Any], schema: str) -> None:
    """The state's functions are one copy each of what the main schema's would make them now, and
    its tables have the main schema's columns, keys and indexes."""
    for query in (STATE_COLUMNS, STATE_INDEXES):
        assert conn.execute(query, (schema,)).fetchall() == conn.execute(query, ("recsql",)).fetchall()
    migrated = conn.execute(STATE_FUNCTIONS, (schema,)).fetchall()
    names = [row[0] for row in migrated]
    assert len(names) == len(set(names)), "an old signature was left beside the new one"
    conn.execute("SELECT recsql._copy_state_functions(%s)", (schema,))
    assert conn.execute(STATE_FUNCTIONS, (schema,)).fetchall() == migrated
    conn.execute("SELECT recsql.fold_states()")  # and they run


def test_a_live_model_state_follows_the_last_migration_up_and_down(server_url):
    """A model state built before the last revision gets that revision's function copies, and
    gives them back on downgrade."""
    name = f"recsql_mig_{uuid.uuid4().hex[:8]}"
    url = create_database(server_url, name)
    try:
        migrate.upgrade(url)
        migrate.downgrade(url, "-1")
        with psycopg.connect(url, autocommit=True) as conn:
            for k in range(60):
                conn.execute("SELECT * FROM recsql.track(%s, %s, 'view')", (f"u{k % 7}", f"i{k % 11}"))
            conn.execute("SELECT recsql.flush()")
            conn.execute(
                "INSERT INTO recsql.models (name, params) VALUES ('wide', recsql.check_params('{\"cooc_window\": 30}'))"
            )
            conn.execute("CALL recsql.build_model_state('wide')")
            row = conn.execute("SELECT schema_name FROM recsql.model_states WHERE model = 'wide'").fetchone()
            assert row is not None
            schema = row[0]
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            _state_copies_are_current(conn, schema)
        migrate.downgrade(url, "-1")
        with psycopg.connect(url, autocommit=True) as conn:
            _state_copies_are_current(conn, schema)
    finally:
        drop_database(server_url, name)
