"""Where a GitHub App's repositories are served, when not where its API says (issue 29: git through the egress
proxy names the git host; a GitHub Enterprise Server or a stand-in may serve git from another name).

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("github_apps", sa.Column("git_url", sa.String(512), nullable=True))


def downgrade() -> None:
    op.drop_column("github_apps", "git_url")
