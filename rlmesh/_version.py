"""The rlmesh release; the sandbox reports it in the startup handshake."""

__version__ = "0.1.0.dev0"
