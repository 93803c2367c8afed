"""Karma: compute given to and taken from each friend, one ledger row per job
and direction (homie.store). The one place that writes it or sums it."""

from __future__ import annotations

import threading


class Karma:
    def __init__(self, store, own_name: str):
        self.store = store
        self.own_name = own_name
        self._lock = threading.Lock()
        # CPU seconds given and taken, summed from the ledger once and then kept up to
        # date by record(): every heartbeat carries them, and summing the whole ledger
        # after each job was the largest part of a lending daemon's sqlite time in a map
        # (it grows with every job ever run).
        self._sums: dict[str, float] | None = None

    def record(self, peer: str, given: bool, cpu_s: float, wall_s: float, gpu_s: float, job_id: str) -> None:
        if peer == self.own_name:
            return  # running one's own job locally is neither giving nor taking
        direction = "given" if given else "taken"
        with self._lock:  # the row and the sums change together: totals() never sees one without the other
            replaced = self.store.record(job_id, peer, direction, cpu_s, gpu_s, wall_s)
            if replaced is None:
                self._sums = None  # not written (a full disk): sum the ledger again next time
            elif self._sums is not None:
                self._sums[direction] += cpu_s - replaced

    def totals(self) -> dict:
        """CPU seconds given and taken in all, as the heartbeat carries them."""
        with self._lock:
            if self._sums is None:
                sums = {"given": 0.0, "taken": 0.0}
                for row in self.store.ledger():
                    sums["given" if row["direction"] == "given" else "taken"] += row["cpu_s"]
                self._sums = sums
            return {"given": round(self._sums["given"], 1), "taken": round(self._sums["taken"], 1)}

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
