"""Karma: compute given to and taken from each friend, one ledger row per job
and direction (homie.store). The one place that writes it or sums it."""

from __future__ import annotations

import threading


class Karma:
    def __init__(self, store, own_name: str):
        self.store = store
        self.own_name = own_name
        self._lock = threading.Lock()
        self._totals: dict | None = None

    def record(self, peer: str, given: bool, cpu_s: float, wall_s: float, gpu_s: float, job_id: str) -> None:
        if peer == self.own_name:
            return  # running one's own job locally is neither giving nor taking
        self.store.record(job_id, peer, "given" if given else "taken", cpu_s, gpu_s, wall_s)
        with self._lock:
            self._totals = None

    def totals(self) -> dict:
        """CPU seconds given and taken in all, as the heartbeat carries them."""
        with self._lock:
            if self._totals is not None:
                return self._totals
        given = taken = 0.0
        for row in self.store.ledger():
            if row["direction"] == "given":
                given += row["cpu_s"]
            else:
                taken += row["cpu_s"]
        totals = {"given": round(given, 1), "taken": round(taken, 1)}
        with self._lock:
            self._totals = totals
        return totals

    def per_peer(self) -> list[dict]:
        """One row per friend: given and taken (cpu, gpu, wall seconds, jobs) and the balance."""
        rows: dict[str, dict] = {}
        for r in self.store.ledger():
            row = rows.setdefault(r["peer"], {"peer": r["peer"], "given_cpu_s": 0.0, "taken_cpu_s": 0.0,
                                              "given_gpu_s": 0.0, "taken_gpu_s": 0.0, "given_wall_s": 0.0,
                                              "taken_wall_s": 0.0, "jobs_given": 0, "jobs_taken": 0})
            d = r["direction"]
            row[f"{d}_cpu_s"] += r["cpu_s"]
            row[f"{d}_gpu_s"] += r["gpu_s"]
            row[f"{d}_wall_s"] += r["wall_s"]
            row[f"jobs_{d}"] += r["jobs"]
        for row in rows.values():
            row["balance_cpu_s"] = row["given_cpu_s"] - row["taken_cpu_s"]
        return sorted(rows.values(), key=lambda r: r["peer"])
