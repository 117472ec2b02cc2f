"""Sluice sidecar: runs next to an app, takes its share of a consumer group, delivers events."""

# First, before anything here imports grpc: the sluice package sets the gRPC core settings
# every Sluice process runs with (sluice/grpcenv.py).
import sluice.grpcenv  # noqa: F401
