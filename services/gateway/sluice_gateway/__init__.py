"""The Sluice gateway: one live feed from the store, fanned out to many subscribers."""

# First, before anything here imports grpc: the sluice package sets the gRPC core settings
# every Sluice process runs with (sluice/grpcenv.py).
import sluice.grpcenv  # noqa: F401
