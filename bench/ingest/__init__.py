"""Ingest benchmark: signed webhooks against ingest and against a bare FastAPI endpoint, in one run."""
