"""The store's per-job bookkeeping, kept cheap as it grows: karma's totals (what every heartbeat
carries) kept up to date as jobs are recorded, equal to summing the ledger whatever order records
and totals come in; the worker's history trimmed to its newest entries."""

from __future__ import annotations

import threading

from homie.karma import Karma
from homie.store import Store


def summed(store: Store) -> dict:
    """The totals as a fresh daemon computes them: from the whole ledger."""
    return Karma(store, "me").totals()


def test_totals_follow_records_and_replacements(tmp_path):
    store = Store(tmp_path / "state.db")
    k = Karma(store, "me")
    assert k.totals() == {"given": 0.0, "taken": 0.0}
    k.record("raj", given=True, cpu_s=1.25, wall_s=2.0, gpu_s=0.0, job_id="j1")
    k.record("raj", given=False, cpu_s=4.0, wall_s=5.0, gpu_s=0.0, job_id="j2")
    assert k.totals() == {"given": 1.2, "taken": 4.0} == summed(store)
    # The same job and direction again (a retried report) replaces its row: counted once.
    k.record("raj", given=True, cpu_s=3.0, wall_s=2.0, gpu_s=0.0, job_id="j1")
    # Running one's own job here is neither giving nor taking.
    k.record("me", given=True, cpu_s=100.0, wall_s=1.0, gpu_s=0.0, job_id="j3")
    assert k.totals() == {"given": 3.0, "taken": 4.0} == summed(store)


def test_totals_agree_with_the_ledger_under_concurrent_records(tmp_path):
    store = Store(tmp_path / "state.db")
    k = Karma(store, "me")

    def worker(n: int) -> None:
        for i in range(200):
            k.record(f"p{n}", given=bool(i % 2), cpu_s=0.5, wall_s=1.0, gpu_s=0.0, job_id=f"{n}-{i}")
            if i % 7 == 0:
                k.totals()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert k.totals() == {"given": 200.0, "taken": 200.0} == summed(store)


def test_a_failed_write_is_not_counted(tmp_path):
    store = Store(tmp_path / "state.db")
    errors = []
    store.on_error = lambda what, e: errors.append(what)
    k = Karma(store, "me")
    k.record("raj", given=True, cpu_s=2.0, wall_s=1.0, gpu_s=0.0, job_id="j1")
    assert k.totals()["given"] == 2.0
    # Every ledger write fails from here, as on a full disk (store.record is tolerant: it logs).
    store._db.execute("CREATE TRIGGER full BEFORE INSERT ON ledger BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    k.record("raj", given=True, cpu_s=5.0, wall_s=1.0, gpu_s=0.0, job_id="j2")
    assert errors == ["record"]
    assert k.totals() == {"given": 2.0, "taken": 0.0} == summed(store)
    store._db.execute("DROP TRIGGER full")
    k.record("raj", given=True, cpu_s=5.0, wall_s=1.0, gpu_s=0.0, job_id="j2")
    assert k.totals() == {"given": 7.0, "taken": 0.0} == summed(store)


def test_the_worker_history_keeps_the_newest(tmp_path):
    store = Store(tmp_path / "state.db")
    for i in range(30):
        store.worker_history_add(f"j{i}", {"finished": 1000.0 + (i * 7) % 30}, keep=10)
    kept = store.worker_history()
    assert sorted(d["finished"] for d in kept.values()) == [1000.0 + f for f in range(20, 30)]
    store.worker_history_add("late", {"finished": 5000.0}, keep=10)
    assert len(store.worker_history()) == 10 and "late" in store.worker_history()
