"""Volumes and snapshots (issue 30): an owner's named persistent volumes and a workspace's snapshots, and on a
workspace the volumes mounted into it and the snapshot it was made from.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

from agentbox.db.models import UTCDateTime

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=True),
        sa.Column("workspace_id", sa.String(32), nullable=False, index=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_ref", sa.String(256), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("memory_kept", sa.Boolean(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("owner", "name"),
    )
    op.add_column("workspaces", sa.Column("volumes", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("workspaces", sa.Column("snapshot_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "snapshot_id")
    op.drop_column("workspaces", "volumes")
    op.drop_table("snapshots")
    op.drop_table("volumes")
