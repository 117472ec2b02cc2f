"""Sluice store: durable streams of events served over gRPC."""
