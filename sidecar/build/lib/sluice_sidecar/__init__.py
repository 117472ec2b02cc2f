"""Sluice sidecar: runs next to an app, takes its share of a consumer group, delivers events."""
