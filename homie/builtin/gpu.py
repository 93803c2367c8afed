"""NVIDIA GPUs through NVML. No NVML or no driver is the normal case on most
laptops: then this probe reports nothing and stays silent."""

from __future__ import annotations

import threading

from homie.api import hookimpl

_lock = threading.Lock()
_state: dict[str, bool | None] = {"init": None}  # None: not tried; False: unavailable; True: initialised


def _nvml():
    with _lock:
        if _state["init"] is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _state["init"] = True
            except Exception:
                _state["init"] = False
        if not _state["init"]:
            return None
        import pynvml

        return pynvml


def gpus() -> list[dict]:
    nv = _nvml()
    if nv is None:
        return []
    out = []
    try:
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h).gpu
            except Exception:
                util = None
            out.append({
                "index": i,
                "name": name,
                "mem_free_gb": round(mem.free / 2**30, 1),
                "mem_total_gb": round(mem.total / 2**30, 1),
                "util": util,
            })
    except Exception:
        return []
    return out


@hookimpl
def homie_probe_resources(config):
    found = gpus()
    if not found:
        return None
    best = max(found, key=lambda g: g["mem_free_gb"])
    return {"gpu": best["name"], "gpu_mem_free_gb": best["mem_free_gb"], "gpus": found}
