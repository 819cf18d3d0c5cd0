"""Alembic migrations of the service's PostgreSQL schema (run by imageclf.core.database.migrate)."""
