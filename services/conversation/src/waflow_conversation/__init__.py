"""waflow package."""
