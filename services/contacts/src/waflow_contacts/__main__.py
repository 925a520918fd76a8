"""`python -m waflow_contacts` runs the service."""

from waflow_contacts.main import run

run()
