"""When each workspace was last used (a sliding TTL moves an ephemeral workspace's expiry on each use).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from agentbox.db.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("last_used_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "last_used_at")
