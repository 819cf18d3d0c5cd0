"""The review queue: why an answer's image was kept for a label, where it is, and its perceptual hash.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("predictions", sa.Column("review", postgresql.ARRAY(sa.Text)))
    op.add_column("predictions", sa.Column("review_file", sa.Text))
    op.add_column("predictions", sa.Column("phash", sa.BigInteger))
    op.create_index("predictions_review", "predictions", ["model", "at"],
                    postgresql_where=sa.text("review IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("predictions_review", "predictions")
    for column in ("phash", "review_file", "review"):
        op.drop_column("predictions", column)
