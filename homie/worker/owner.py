"""Is the owner using the machine? (accept_jobs: idle)

The machine's CPU time minus what homie's own jobs used, over the last few
samples: a job keeping every core busy is not its owner coming back, and one
busy moment (a page loading) is not either.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

SAMPLE_EVERY = 2.0
WINDOW = 3  # consecutive busy samples before the owner counts as back (about 6 s)


def machine_cpu() -> tuple[float, float]:
    """(busy CPU seconds, capacity CPU seconds) since boot, all cores together."""
    import psutil

    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return total - idle, total


class OwnerWatch:
    def __init__(self, idle_threshold: float, window: int = WINDOW,
                 machine: Callable[[], tuple[float, float]] = machine_cpu,
                 clock: Callable[[], float] = time.monotonic):
        self.idle_threshold = idle_threshold
        self._machine = machine
        self._clock = clock
        self._last: tuple[float, float] | None = None  # busy, total
        self._jobs: dict[str, float] = {}  # job -> its CPU seconds at the last sample
        self._recent: deque[bool] = deque(maxlen=window)
        self.owner_percent = 0.0

    def sample(self, jobs_cpu: dict[str, float]) -> bool:
        """One sample; jobs_cpu: each running job's CPU seconds so far. True once
        the owner has kept the machine busy for the whole window."""
        busy, total = self._machine()
        d_jobs = sum(max(0.0, cpu - self._jobs.get(j, 0.0)) for j, cpu in jobs_cpu.items())
        self._jobs = dict(jobs_cpu)
        last, self._last = self._last, (busy, total)
        if last is None:
            return False
        d_total = total - last[1]
        if d_total <= 0:
            return False
        d_owner = max(0.0, (busy - last[0]) - d_jobs)
        self.owner_percent = min(100.0, 100.0 * d_owner / d_total)
        self._recent.append(self.owner_percent > 100.0 - self.idle_threshold)
        return len(self._recent) == self._recent.maxlen and all(self._recent)

    def reset(self) -> None:
        self._recent.clear()
        self._last = None
        self._jobs = {}
