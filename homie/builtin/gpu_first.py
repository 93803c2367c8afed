"""gpu-first: a --gpu job goes to the peer with the most free GPU memory."""

from __future__ import annotations

from homie.api import hookimpl


@hookimpl
def homie_choose_peer(job, peers, config):
    if not job.gpu and job.scheduler != "gpu-first":
        return None
    with_gpu = [p for p in peers if p.has_gpu]
    if not with_gpu:
        return None
    return max(with_gpu, key=lambda p: (p.gpu_mem_free_gb or 0.0, not p.local, p.idleness))
