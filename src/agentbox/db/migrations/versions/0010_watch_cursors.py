"""Directory watchers that outlive their call: where each one's events were read up to, shared by the replicas.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watch_cursors",
        sa.Column("workspace_id", sa.String(32), primary_key=True),
        sa.Column("pid", sa.Integer(), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("read_to", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("watch_cursors")
