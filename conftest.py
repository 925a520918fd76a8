"""Loads the shared fixtures (real Kafka, real MongoDB-protocol server, tenants) for every test in the repo."""

pytest_plugins = ["waflow_testing.fixtures"]
