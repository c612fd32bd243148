"""callbox: a self-hosted voice platform and SDK compatible with SignalWire's APIs."""

__version__ = "0.1.0"
