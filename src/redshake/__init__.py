"""redshake: copy and sync data between Redis / Valkey deployments."""

__version__ = "0.1.0"
