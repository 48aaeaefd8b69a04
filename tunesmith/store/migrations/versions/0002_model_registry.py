"""The model registry: named models, their versions (run folders) and stages, and the audit trail of
stage changes that rollback reads.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")  # as store/schema.py's Json


def upgrade() -> None:
    op.create_table('registered_models',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('registered_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registered_models_owner'), ['owner'], unique=False)

    op.create_table('registry_events',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('from_stage', sa.String(length=16), nullable=True),
    sa.Column('to_stage', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('registry_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_registry_events_model'), ['model'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('run_path', sa.Text(), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('base_model', sa.Text(), nullable=False),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('dataset_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('lineage', JSON, nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('stage_changed_at', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['model'], ['registered_models.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model', 'version', name='uq_model_versions_model_version')
    )
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index('uq_model_versions_one_production', ['model'], unique=True, sqlite_where=sa.text("stage = 'production'"), postgresql_where=sa.text("stage = 'production'"))


def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index('uq_model_versions_one_production', sqlite_where=sa.text("stage = 'production'"), postgresql_where=sa.text("stage = 'production'"))

    op.drop_table('model_versions')
    with op.batch_alter_table('registry_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registry_events_model'))

    op.drop_table('registry_events')
    with op.batch_alter_table('registered_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_registered_models_owner'))

    op.drop_table('registered_models')
