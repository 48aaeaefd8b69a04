"""What a logged answer was like without what it said (how many items, the model's labels): with --no-log-inputs
feedback was checked against nothing, and an unknown label or an index past the batch was stored with a 201.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")  # as store/schema.py's Json


def upgrade() -> None:
    op.add_column('predictions', sa.Column('answer_shape', JSON, nullable=True))  # nullable: no table copy on SQLite


def downgrade() -> None:
    with op.batch_alter_table('predictions') as batch:  # SQLite drops columns by copying the table
        batch.drop_column('answer_shape')
