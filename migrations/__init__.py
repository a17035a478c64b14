"""Alembic history of the job server's schema (service.models). Run with `ttm admin migrate`."""
