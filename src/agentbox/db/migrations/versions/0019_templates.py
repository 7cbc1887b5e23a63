"""Templates (issue 30): an owner's workspace images built from Dockerfiles, with start and ready commands.

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

from agentbox.db.models import UTCDateTime

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("image", sa.String(256), nullable=False),
        sa.Column("image_id", sa.String(128), nullable=True),
        sa.Column("start_cmd", sa.Text(), nullable=True),
        sa.Column("ready_cmd", sa.Text(), nullable=True),
        sa.Column("ready_timeout", sa.Float(), nullable=False),
        sa.Column("pool_size", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("log", sa.Text(), nullable=False),
        sa.Column("log_size", sa.BigInteger(), nullable=False),
        sa.Column("replica", sa.String(64), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("built_at", UTCDateTime(), nullable=True),
        sa.UniqueConstraint("owner", "name", "tag"),
    )


def downgrade() -> None:
    op.drop_table("templates")
