"""The prediction log: one row per answered image and version, and the drift references.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Text),
        sa.Column("route", sa.Text, nullable=False),
        sa.Column("job_id", sa.Text),
        sa.Column("item", sa.Integer),
        sa.Column("top_ids", postgresql.ARRAY(sa.Integer), nullable=False),
        sa.Column("top_probs", postgresql.ARRAY(sa.REAL), nullable=False),
        sa.Column("confidence", sa.REAL, nullable=False),
        sa.Column("entropy", sa.REAL, nullable=False),
        sa.Column("label", sa.Integer),
        sa.Column("labelled_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("request_id", "version"),
    )
    op.create_index("predictions_model_version_at", "predictions", ["model", "version", "at"])
    op.create_index("predictions_labelled", "predictions", ["model", "labelled_at"],
                    postgresql_where=sa.text("label IS NOT NULL"))
    op.create_index("predictions_at", "predictions", ["at"])
    op.create_table(
        "drift_references",
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("model", "version"),
    )


def downgrade() -> None:
    op.drop_table("drift_references")
    op.drop_table("predictions")
