"""Sluice: the Python client for the Sluice event store."""
