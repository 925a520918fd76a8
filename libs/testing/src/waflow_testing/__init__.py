"""Test support shared by every waflow package: real infrastructure fixtures and helpers."""
