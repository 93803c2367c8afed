"""Test plugin: this node reports one GPU (for --gpu tests on machines without one)."""

from homie import hookimpl


@hookimpl
def homie_probe_resources(config):
    return {"gpu": "FakeGPU 24GB", "gpu_mem_free_gb": 20.0,
            "gpus": [{"index": 0, "name": "FakeGPU 24GB", "mem_free_gb": 20.0, "mem_total_gb": 24.0}]}
