"""Contacts benchmark: `uv run python -m bench.contacts` (see __main__.py)."""
