"""Unix-second columns as 64-bit integers on PostgreSQL, whose INTEGER ends in January 2038 (OpenAI's objects carry
times as Unix seconds; an `expires_at` a few years ahead already reaches past it). SQLite's INTEGER is 64-bit: nothing
changes there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = {  # table -> (column, nullable)
    "files": (("created_at", False), ("expires_at", True)),
    "jobs": (("created_at", False), ("finished_at", True), ("estimated_finish", True)),
    "job_events": (("created_at", False),),
    "job_checkpoints": (("created_at", False),),
    "registered_models": (("created_at", False),),
    "model_versions": (("created_at", False), ("stage_changed_at", False)),
    "registry_events": (("created_at", False),),
}


def _retype(old: sa.types.TypeEngine, new: sa.types.TypeEngine) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, columns in COLUMNS.items():
        for column, nullable in columns:
            op.alter_column(table, column, type_=new, existing_type=old, existing_nullable=nullable)


def upgrade() -> None:
    _retype(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    _retype(sa.BigInteger(), sa.Integer())
