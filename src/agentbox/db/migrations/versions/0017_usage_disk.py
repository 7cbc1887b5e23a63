"""Each usage sample's disk use (bytes written to the workspace's disk, what E2B's metrics call reports);
NULL for the samples taken before, and where the provider cannot say.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("usage_samples", sa.Column("disk", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("usage_samples", "disk")
