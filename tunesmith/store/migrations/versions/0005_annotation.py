"""Annotation: labelling tasks, the items to label, and each annotator's labels and skips.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")  # as store/schema.py's Json
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # as store/schema.py's autoincrement keys


def upgrade() -> None:
    op.create_table('annotation_tasks',
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('labels', JSON, nullable=False),
    sa.Column('instructions', sa.Text(), nullable=False),
    sa.Column('overlap', sa.Integer(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('annotation_items',
    sa.Column('seq', SEQ, autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('item_id', sa.String(length=256), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('text_hash', sa.String(length=64), nullable=False),
    sa.Column('meta', JSON, nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('suggestion', JSON, nullable=True),
    sa.Column('uncertainty', sa.Float(), nullable=True),
    sa.Column('shown_to', sa.String(length=128), nullable=True),
    sa.Column('shown_at', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['task'], ['annotation_tasks.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('task', 'item_id', name='uq_annotation_items_task_item')
    )
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_items_task_hash', ['task', 'text_hash'], unique=False)

    op.create_table('annotations',
    sa.Column('seq', SEQ, autoincrement=True, nullable=False),
    sa.Column('task', sa.String(length=128), nullable=False),
    sa.Column('item_seq', SEQ, nullable=False),
    sa.Column('annotator', sa.String(length=128), nullable=False),
    sa.Column('label', sa.String(length=256), nullable=True),
    sa.Column('origin', sa.String(length=64), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=True),
    sa.Column('created', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['item_seq'], ['annotation_items.seq'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task'], ['annotation_tasks.name'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('item_seq', 'annotator', name='uq_annotations_item_annotator')
    )
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.create_index('ix_annotations_task_annotator_created', ['task', 'annotator', 'created'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('annotations', schema=None) as batch_op:
        batch_op.drop_index('ix_annotations_task_annotator_created')
    op.drop_table('annotations')
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.drop_index('ix_annotation_items_task_hash')
    op.drop_table('annotation_items')
    op.drop_table('annotation_tasks')
