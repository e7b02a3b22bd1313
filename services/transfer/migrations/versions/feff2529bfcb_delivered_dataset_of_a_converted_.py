"""delivered dataset of a converted transfer

Revision ID: feff2529bfcb
Revises: aceef526ea50
Create Date: 2026-11-29 16:31:46.226399
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op


revision: str = 'feff2529bfcb'
down_revision: str | None = 'aceef526ea50'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    """The service's PostgreSQL schema (None on SQLite): an ALTER TABLE is not translated by schema_translate_map."""
    return context.config.attributes.get("schema")


def upgrade() -> None:
    with op.batch_alter_table('transfers', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('delivered_dataset', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('transfers', schema=_schema()) as batch_op:
        batch_op.drop_column('delivered_dataset')

