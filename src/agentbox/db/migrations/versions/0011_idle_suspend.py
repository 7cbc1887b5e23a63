"""Idle suspend: each workspace's idle timeout, its last activity, and when its sandbox was frozen.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

from agentbox.db.models import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("idle_timeout", sa.Float, nullable=True))
    op.add_column("workspaces", sa.Column("active_at", UTCDateTime, nullable=True))
    op.add_column("workspaces", sa.Column("suspended_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "suspended_at")
    op.drop_column("workspaces", "active_at")
    op.drop_column("workspaces", "idle_timeout")
