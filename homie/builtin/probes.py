"""CPU and memory, the resources every heartbeat advertises."""

from __future__ import annotations

from homie.hookspecs import hookimpl


@hookimpl
def homie_probe_resources(config):
    import psutil

    # interval=None: idle share since the previous call (the previous heartbeat),
    # without blocking the heartbeat loop.
    busy = psutil.cpu_percent(interval=None)
    return {
        "ram_free_gb": round(psutil.virtual_memory().available / 2**30, 1),
        "cpu_percent_idle": round(100.0 - busy),
    }
