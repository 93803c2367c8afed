"""homie: lend idle machines to friends on the same network."""

__version__ = "0.1.0"
# Bumped when the wire format changes incompatibly; peers compare it in HELLO.
PROTOCOL_VERSION = 1
