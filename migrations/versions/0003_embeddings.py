"""Item embeddings in pgvector, hybrid scoring, NOTIFY from fold().

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from pathlib import Path

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0003.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0003.down.sql").read_text())
