"""GitHub App registrations (secrets sealed), and the repository a workspace was made with.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from agentbox.db.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "github_apps",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("app_id", sa.BigInteger, nullable=False),
        sa.Column("api_url", sa.String(512), nullable=False),
        sa.Column("private_key", sa.LargeBinary, nullable=False),
        sa.Column("webhook_secret", sa.LargeBinary, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.add_column("workspaces", sa.Column("repo", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "repo")
    op.drop_table("github_apps")
