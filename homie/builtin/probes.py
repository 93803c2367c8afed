"""CPU and memory, the resources every heartbeat advertises."""

from __future__ import annotations

from homie.api import hookimpl


@hookimpl
def homie_probe_resources(config):
    import psutil

    # interval=None: idle share since the previous call (the previous heartbeat),
    # without blocking the heartbeat loop.
    busy = psutil.cpu_percent(interval=None)
    vm = psutil.virtual_memory()
    return {
        "ram_free_gb": round(vm.available / 2**30, 1),
        "ram_total_gb": round(vm.total / 2**30, 1),  # for top's RAM meter
        "cpu_percent_idle": round(100.0 - busy),
    }
