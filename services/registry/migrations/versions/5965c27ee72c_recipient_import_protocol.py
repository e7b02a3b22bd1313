"""recipient import protocol

Revision ID: 5965c27ee72c
Revises: 95b03f2e9ae3
Create Date: 2026-11-29 16:31:53.757217
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op


revision: str = '5965c27ee72c'
down_revision: str | None = '95b03f2e9ae3'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _schema() -> str | None:
    """The service's PostgreSQL schema (None on SQLite): an ALTER TABLE is not translated by schema_translate_map."""
    return context.config.attributes.get("schema")


def upgrade() -> None:
    with op.batch_alter_table('participants', schema=_schema()) as batch_op:
        batch_op.add_column(sa.Column('import_protocol', sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('participants', schema=_schema()) as batch_op:
        batch_op.drop_column('import_protocol')

