"""homie: lend idle machines to friends on the same network.

Plugins import from homie.api, the public plugin API; `from homie import hookimpl`
works too (loaded on first use, so `import homie` stays light for the CLI).
"""

__version__ = "0.1.0"
# Bumped when the wire format changes incompatibly; peers compare it in HELLO.
PROTOCOL_VERSION = 1


def __getattr__(name: str):
    if name == "hookimpl":
        from homie.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'homie' has no attribute {name!r}")
