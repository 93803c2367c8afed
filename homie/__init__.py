"""homie: lend idle machines to friends on the same network.

From Python (docs/api.md):

    import homie

    client = homie.Client()                     # the local daemon
    job = client.run("train.py", ["--epochs", "3"], files=["data.csv"])
    print(job.wait().exit_code, job.results("results"))

    from homie.futures import Executor           # functions on friends' machines
    with Executor() as ex:
        print(list(ex.map(pow, range(10), [2] * 10)))

Plugins import from homie.api, the public plugin API; `from homie import hookimpl`
works too. The names below are imported on first use, so `import homie` stays light.
"""

__version__ = "0.1.0"
# Bumped when the wire format changes incompatibly; peers compare it in HELLO.
PROTOCOL_VERSION = 1

_LAZY = {
    "Client": "homie.client", "Job": "homie.client", "JobInfo": "homie.client", "JobState": "homie.client",
    "Peer": "homie.client", "OutputEvent": "homie.client", "JobEvent": "homie.client", "Ended": "homie.client",
    "HomieError": "homie.errors", "NoDaemon": "homie.errors", "NoPeer": "homie.errors",
    "PeerLost": "homie.errors", "TransferError": "homie.errors", "UsageError": "homie.errors",
    "Executor": "homie.futures", "hookimpl": "homie.hookspecs",
}

__all__ = ["__version__", "PROTOCOL_VERSION", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'homie' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
