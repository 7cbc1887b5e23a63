"""Several replicas on one database: who is alive, who leads, who is creating what, and which
replica is running a command in a shell session; and the usage samples the leader takes for all.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from agentbox.db.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(256), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False, index=True),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "session_claims",
        sa.Column("workspace_id", sa.String(32), primary_key=True),
        sa.Column("pid", sa.Integer(), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("read_to", sa.BigInteger(), nullable=True),
        sa.Column("until", UTCDateTime(), nullable=True),
        sa.Column("nonce", sa.String(32), nullable=True),
    )
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("replica", sa.String(64), nullable=True))
    op.create_table(
        "usage_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False, index=True),
        sa.Column("cpu", sa.Float(), nullable=True),
        sa.Column("memory", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("usage_samples")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("replica")
    op.drop_table("session_claims")
    op.drop_table("leases")
    op.drop_table("replicas")
