"""Durable stores: job records (SQLAlchemy) and artifacts (a local directory)."""
