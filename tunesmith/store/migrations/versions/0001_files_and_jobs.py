"""Files and fine-tuning jobs: the first tables of the store (uploaded files, jobs, their events and
checkpoints).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")  # as store/schema.py's Json


def upgrade() -> None:
    op.create_table('files',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('filename', sa.String(length=512), nullable=False),
    sa.Column('bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_files_created'), ['created'], unique=False)
        batch_op.create_index(batch_op.f('ix_files_owner'), ['owner'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=False),
    sa.Column('training_file', sa.String(length=64), nullable=False),
    sa.Column('validation_file', sa.String(length=64), nullable=True),
    sa.Column('suffix', sa.String(length=64), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=24), nullable=False),
    sa.Column('method', JSON, nullable=False),
    sa.Column('metadata', JSON, nullable=True),
    sa.Column('integrations', JSON, nullable=True),
    sa.Column('fine_tuned_model', sa.String(length=256), nullable=True),
    sa.Column('trained_tokens', sa.BigInteger(), nullable=True),
    sa.Column('finished_at', sa.Integer(), nullable=True),
    sa.Column('estimated_finish', sa.Integer(), nullable=True),
    sa.Column('error', JSON, nullable=True),
    sa.Column('result_files', JSON, nullable=False),
    sa.Column('run_dir', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('heartbeat_at', sa.Float(), nullable=True),
    sa.Column('control', sa.String(length=16), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_created'), ['created'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_fine_tuned_model'), ['fine_tuned_model'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_owner'), ['owner'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_status'), ['status'], unique=False)

    op.create_table('job_checkpoints',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('step_number', sa.Integer(), nullable=False),
    sa.Column('metrics', JSON, nullable=False),
    sa.Column('fine_tuned_model_checkpoint', sa.String(length=256), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('job_checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_checkpoints_fine_tuned_model_checkpoint'), ['fine_tuned_model_checkpoint'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_checkpoints_job_id'), ['job_id'], unique=False)

    op.create_table('job_events',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Integer(), nullable=False),
    sa.Column('level', sa.String(length=8), nullable=False),
    sa.Column('type', sa.String(length=8), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('data', JSON, nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('id')
    )
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.create_index('ix_job_events_job_seq', ['job_id', 'seq'], unique=False)

def downgrade() -> None:
    with op.batch_alter_table('job_events', schema=None) as batch_op:
        batch_op.drop_index('ix_job_events_job_seq')

    op.drop_table('job_events')
    with op.batch_alter_table('job_checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_checkpoints_job_id'))
        batch_op.drop_index(batch_op.f('ix_job_checkpoints_fine_tuned_model_checkpoint'))

    op.drop_table('job_checkpoints')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_jobs_owner'))
        batch_op.drop_index(batch_op.f('ix_jobs_fine_tuned_model'))
        batch_op.drop_index(batch_op.f('ix_jobs_created'))

    op.drop_table('jobs')
    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_files_owner'))
        batch_op.drop_index(batch_op.f('ix_files_created'))

    op.drop_table('files')
