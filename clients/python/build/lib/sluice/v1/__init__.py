"""Generated sluice.v1 messages and stubs (``make protos``); do not edit."""
