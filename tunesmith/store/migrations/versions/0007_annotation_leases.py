"""Annotation leases: one per item and annotator shown it, where an item held one (its last viewer's), so with an
overlap of 2 or more the last open item went to every annotator at once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('annotation_leases',
    sa.Column('item_seq', sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    sa.Column('annotator', sa.String(length=128), nullable=False),
    sa.Column('shown_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['item_seq'], ['annotation_items.seq'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('item_seq', 'annotator')
    )
    with op.batch_alter_table('annotation_items') as batch:  # SQLite drops columns by copying the table
        batch.drop_column('shown_to')
        batch.drop_column('shown_at')


def downgrade() -> None:
    with op.batch_alter_table('annotation_items') as batch:
        batch.add_column(sa.Column('shown_at', sa.Float(), nullable=True))
        batch.add_column(sa.Column('shown_to', sa.String(length=128), nullable=True))
    op.drop_table('annotation_leases')
