"""A bulk of pairs is added without item_pairs' index by item_b (built again after it); the user
ids of the derived tables compare as bytes (collate "C"); a bulk fold analyzes item_stats only once
its rows grew by a fifth.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-28
"""

from pathlib import Path

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# Frozen SQL for this revision lives beside the revisions and never changes once released.
_SQL = Path(__file__).resolve().parent.parent / "sql"


def _run(sql: str) -> None:
    # Straight to psycopg without parameters, so % and $$ in the SQL are taken literally.
    op.get_bind().connection.dbapi_connection.cursor().execute(sql)


def upgrade() -> None:
    _run((_SQL / "0017.up.sql").read_text())


def downgrade() -> None:
    _run((_SQL / "0017.down.sql").read_text())
