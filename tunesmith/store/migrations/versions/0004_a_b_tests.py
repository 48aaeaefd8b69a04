"""A/B tests between versions of a registry model (one running test per model).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")  # as store/schema.py's Json


def upgrade() -> None:
    op.create_table('ab_tests',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('variants', JSON, nullable=False),
    sa.Column('shadow', JSON, nullable=True),
    sa.Column('alpha', sa.Float(), nullable=False),
    sa.Column('horizon', sa.Integer(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('stopped', sa.Float(), nullable=True),
    sa.Column('winner', sa.String(length=128), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ab_tests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ab_tests_model'), ['model'], unique=False)
        batch_op.create_index('uq_ab_tests_one_running', ['model'], unique=True, sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))


def downgrade() -> None:
    with op.batch_alter_table('ab_tests', schema=None) as batch_op:
        batch_op.drop_index('uq_ab_tests_one_running', sqlite_where=sa.text("status = 'running'"), postgresql_where=sa.text("status = 'running'"))
        batch_op.drop_index(batch_op.f('ix_ab_tests_model'))

    op.drop_table('ab_tests')
