"""Checkpoints without a network: what the worker takes, what the submitter keeps,
and the policy around them (settling, interval, retries, owner activity), with
an injected clock. The transfer itself runs over a real socketpair and the
production Channel."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from homie import checkpoints
from homie.checkpoints import CHUNK, Store, Watcher
from homie.errors import HomieError, ManifestError
from homie.submit import migration
from homie.wire import protocol
from homie.wire.channel import Channel
from homie.wire.protocol import Conversation
from homie.worker.owner import OwnerWatch


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def write(path: Path, data: bytes, rename: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if rename:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        path.write_bytes(data)


def watcher(root: Path, interval: float = 10.0, clock=None, sleep=lambda s: None) -> Watcher:
    return Watcher(root, checkpoints.normalize(["model.pt"]), interval, clock=clock or Clock(), wall=lambda: 5.0,
                   sleep=sleep)


# -- the worker's side ---------------------------------------------------------------


def test_normalize_keeps_checkpoint_first_and_refuses_escapes():
    assert checkpoints.normalize(None) == ["checkpoint"]
    assert checkpoints.normalize(["./state/", "checkpoint", "state"]) == ["checkpoint", "state"]
    for bad in ("../x", "/etc", "a/../../b", ""):
        with pytest.raises(ManifestError):
            checkpoints.normalize([bad])


def test_nothing_is_taken_while_it_is_being_written(tmp_path):
    clock = Clock()
    pauses = {"n": 0, "writing": True}

    def sleep(seconds):  # the job writes again during every settling pause
        assert seconds == checkpoints.SETTLE
        pauses["n"] += 1
        if pauses["writing"]:
            write(tmp_path / "checkpoint" / "state.bin", os.urandom(10))

    w = watcher(tmp_path, clock=clock, sleep=sleep)
    assert not w.poll()  # nothing there
    write(tmp_path / "checkpoint" / "state.bin", b"a" * 10)
    assert not w.poll() and not w.poll()
    assert pauses["n"] == 2 * checkpoints.SETTLE_TRIES  # each poll gave up after its tries
    pauses["writing"] = False
    assert w.poll()
    assert w.seq == 1 and [f.path for f in w.snapshot.files] == ["checkpoint/state.bin"]


def test_a_checkpoint_renamed_in_during_the_pause_is_taken_once_quiet_in_the_same_poll(tmp_path):
    # A trainer that renames a new checkpoint in every half second: the pause that
    # sees a rename is followed by a quiet one, and the newest version is taken.
    clock = Clock()
    versions = iter([b"2" * 10, b"3" * 10])

    def sleep(seconds):
        v = next(versions, None)
        if v is not None:
            write(tmp_path / "checkpoint" / "state.bin", v)

    w = watcher(tmp_path, clock=clock, sleep=sleep)
    write(tmp_path / "checkpoint" / "state.bin", b"1" * 10)
    assert w.poll() and w.seq == 1
    assert w.snapshot.read_chunk(w.snapshot.files[0].chunks[0]) == b"3" * 10


def test_a_checkpoint_removed_during_the_pause_is_not_taken(tmp_path):
    clock = Clock()
    write(tmp_path / "checkpoint" / "state.bin", b"1" * 10)
    w = watcher(tmp_path, clock=clock, sleep=lambda s: (tmp_path / "checkpoint" / "state.bin").unlink())
    assert not w.poll() and w.snapshot is None


def test_at_most_one_per_interval_and_none_when_unchanged(tmp_path):
    clock = Clock()
    w = watcher(tmp_path, interval=30, clock=clock)
    write(tmp_path / "model.pt", b"1")
    assert w.poll() and w.seq == 1
    clock.t += 5
    assert not w.poll()  # unchanged
    write(tmp_path / "model.pt", b"2")
    for _ in range(5):
        clock.t += 2
        assert not w.poll()  # changed, but the interval is not over
    clock.t += 30
    assert w.poll() and w.seq == 2
    assert w.snapshot.read_chunk(w.snapshot.files[0].chunks[0]) == b"2"


def test_temporary_names_are_never_taken(tmp_path):
    clock = Clock()
    w = watcher(tmp_path, clock=clock)
    write(tmp_path / "checkpoint" / ".hidden", b"x", rename=False)
    write(tmp_path / "checkpoint" / "state.bin.tmp", b"half", rename=False)
    write(tmp_path / "checkpoint" / "state.part", b"half", rename=False)
    w.poll()
    clock.t += 5
    assert not w.poll() and w.snapshot is None


def test_a_file_rewritten_in_place_while_read_is_not_taken(tmp_path):
    write(tmp_path / "checkpoint" / "a", b"x" * 100)
    sig = checkpoints.signature(tmp_path, ["checkpoint"])
    write(tmp_path / "checkpoint" / "a", b"y" * 200, rename=False)  # after the signature, before take
    assert checkpoints.take(tmp_path, sig, 1, 0.0) is None


def test_a_snapshot_keeps_its_bytes_after_the_job_renames_a_new_version_in(tmp_path):
    write(tmp_path / "checkpoint" / "a", b"old" * 1000)
    snap = checkpoints.take(tmp_path, checkpoints.signature(tmp_path, ["checkpoint"]), 1, 0.0)
    write(tmp_path / "checkpoint" / "a", b"new" * 1000)
    assert snap.read_chunk(snap.files[0].chunks[0]) == b"old" * 1000
    snap.close()


def test_a_snapshot_rewritten_in_place_is_refused_when_sent(tmp_path):
    write(tmp_path / "checkpoint" / "a", b"old" * 1000)
    snap = checkpoints.take(tmp_path, checkpoints.signature(tmp_path, ["checkpoint"]), 1, 0.0)
    with open(tmp_path / "checkpoint" / "a", "r+b") as f:
        f.write(b"NEW")
    with pytest.raises(HomieError, match="changed while"):
        snap.read_chunk(snap.files[0].chunks[0])


def test_links_in_checkpoint_paths_are_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"owner's")
    (tmp_path / "job" / "checkpoint").mkdir(parents=True)
    os.symlink(secret, tmp_path / "job" / "checkpoint" / "leak")
    os.symlink(tmp_path, tmp_path / "job" / "checkpoint" / "dir")
    assert checkpoints.signature(tmp_path / "job", ["checkpoint"]) == {}


def test_final_poll_takes_at_once(tmp_path):
    clock = Clock()
    w = watcher(tmp_path, clock=clock)
    write(tmp_path / "checkpoint" / "s", b"1")
    assert w.poll(final=True) and w.seq == 1


def test_a_restored_checkpoint_is_not_new(tmp_path):
    clock = Clock()
    write(tmp_path / "checkpoint" / "s", b"restored")
    w = watcher(tmp_path, clock=clock)
    w.prime()
    clock.t += 100
    assert not w.poll() and not w.poll(final=True)
    write(tmp_path / "checkpoint" / "s", b"next")
    assert w.poll() and w.seq == 1


def test_closing_waits_for_the_sender(tmp_path):
    write(tmp_path / "checkpoint" / "a", b"z" * 10)
    snap = checkpoints.take(tmp_path, checkpoints.signature(tmp_path, ["checkpoint"]), 1, 0.0)
    with snap:
        snap.close()  # replaced while being sent: the descriptors stay until it is done
        assert snap.read_chunk(snap.files[0].chunks[0]) == b"z" * 10
    with pytest.raises(HomieError):
        with snap:
            pass


# -- the submitter's side and the transfer -----------------------------------------------


def pair():
    a, b = socket.socketpair()
    server = Channel(a, Conversation(protocol.SERVER))
    client = Channel(b, Conversation(protocol.CLIENT))
    server.send("hello", name="w", proto=1, homie="x", python="3")
    client.recv_msg("hello")
    return server, client


def transfer(job_root: Path, store: Store, seq: int, attempt: int = 1):
    snap = checkpoints.take(job_root, checkpoints.signature(job_root, ["checkpoint"]), seq, 100.0 + seq)
    server, client = pair()
    sent = {}

    def serve():
        msg = server.recv_msg("ckpt_fetch")
        sent["job"] = msg["job_id"]
        checkpoints.serve(server, "j1", snap)

    t = threading.Thread(target=serve)
    t.start()
    got = checkpoints.fetch(client, "j1", {"token": "t"}, store, attempt)
    t.join()
    server.close()
    client.close()
    snap.close()
    return got


def test_only_changed_chunks_travel_and_the_result_is_byte_identical(tmp_path, monkeypatch):
    job = tmp_path / "job"
    big = bytearray(os.urandom(8 * CHUNK + 123))
    write(job / "checkpoint" / "model.bin", bytes(big))
    write(job / "checkpoint" / "rng.json", b'{"seed": 1}')
    store = Store(tmp_path / "store")
    asked = []
    real = checkpoints.Store.missing

    def spy(self, new):
        out = real(self, new)
        asked.append(len(out))
        return out

    monkeypatch.setattr(checkpoints.Store, "missing", spy)
    saved = transfer(job, store, 1)
    assert saved.seq == 1 and asked == [10]
    big[3 * CHUNK + 5: 3 * CHUNK + 9] = b"EDIT"
    write(job / "checkpoint" / "model.bin", bytes(big))
    saved = transfer(job, store, 2)
    assert saved.seq == 2 and asked[-1] == 1  # one changed chunk of 1 MiB; rng.json unchanged
    [(entry, src)] = [x for x in store.entries() if x[0].path == "checkpoint/model.bin"]
    assert src.read_bytes() == bytes(big)
    assert sorted(p.name for p in store.root.iterdir()) == ["CURRENT", "v1-2"]


def test_a_chunk_rewritten_in_place_mid_fetch_is_refused_and_the_last_checkpoint_stays(tmp_path):
    job = tmp_path / "job"
    first = os.urandom(2 * CHUNK + 5)
    write(job / "checkpoint" / "a", first)
    store = Store(tmp_path / "store")
    transfer(job, store, 1)
    write(job / "checkpoint" / "a", os.urandom(2 * CHUNK + 5))
    snap = checkpoints.take(job, checkpoints.signature(job, ["checkpoint"]), 2, 102.0)
    with open(job / "checkpoint" / "a", "r+b") as f:  # in place: the snapshot's descriptor sees it
        f.seek(CHUNK + 1)
        f.write(b"EDIT")
    server, client = pair()

    def serve():
        server.recv_msg("ckpt_fetch")
        checkpoints.serve(server, "j1", snap)

    t = threading.Thread(target=serve)
    t.start()
    with pytest.raises(HomieError, match="changed while it was being sent"):
        checkpoints.fetch(client, "j1", {}, store, 1)
    t.join()
    snap.close()
    assert store.current().seq == 1
    assert store.entries()[0][1].read_bytes() == first
    assert not [p for p in store.root.iterdir() if p.name.startswith("incoming")]


def test_no_checkpoint_yet_is_none(tmp_path):
    server, client = pair()
    t = threading.Thread(target=lambda: (server.recv_msg("ckpt_fetch"), checkpoints.serve(server, "j1", None)))
    t.start()
    assert checkpoints.fetch(client, "j1", {}, Store(tmp_path / "s"), 1) is None
    t.join()


def test_a_fetch_cut_short_leaves_the_last_committed_checkpoint(tmp_path):
    job = tmp_path / "job"
    write(job / "checkpoint" / "a", b"first")
    store = Store(tmp_path / "store")
    transfer(job, store, 1)
    # A stage left by a crash mid-fetch, and a CURRENT that points at it not yet:
    (store.root / "incoming-2" / "chunks").mkdir(parents=True)
    (store.root / "incoming-2" / "chunks" / "junk").write_bytes(b"half")
    store.cleanup()
    assert [p.name for p in sorted(store.root.iterdir())] == ["CURRENT", "v1-1"]
    assert store.current().seq == 1
    assert store.entries()[0][1].read_bytes() == b"first"


def test_a_hostile_manifest_is_refused(tmp_path):
    ok = {"path": "checkpoint/a", "mode": 0o644, "size": 3, "sha256": "a" * 64, "chunks": ["b" * 64]}
    checkpoints.parse_manifest([ok])
    for bad in ([{**ok, "path": "../x"}], [{**ok, "chunks": []}], [{**ok, "size": CHUNK + 1}], [ok, ok], "x",
                [{**ok, "chunks": ["short"]}]):
        with pytest.raises(Exception) as e:
            checkpoints.parse_manifest(bad)
        assert e.type.__name__ in ("ProtocolError", "ManifestError")


# -- policy -------------------------------------------------------------------------


def test_retry_budget_defaults():
    assert migration.retry_budget(None, checkpointed=False) == 0
    assert migration.retry_budget(None, checkpointed=True) == migration.CHECKPOINTED_RETRIES == 3
    assert migration.retry_budget(5, checkpointed=False) == 5
    assert migration.retry_budget(0, checkpointed=True) == 0


def test_each_attempt_has_its_own_wire_id():
    ids = {migration.wire_id("ab12cd34", n) for n in (None, 1, 2, 3)}
    assert ids == {"ab12cd34", "ab12cd34r2", "ab12cd34r3"}
    from homie.worker.session import JOB_ID_RE

    assert all(JOB_ID_RE.match(i) for i in ids)


def test_reaper_waits_for_the_worker_and_does_not_hammer_it():
    clock = Clock()
    online = {"i1": False}
    r = migration.Reaper(connect=None, online=lambda i: online[i], log=None, clock=clock)
    s = migration.Stale("i1", "10.0.0.1", 1, "jr2", "t", 0.0)
    assert r.due([s]) == []
    online["i1"] = True
    assert r.due([s]) == [s]
    assert r.due([s]) == []  # in progress
    r._busy.clear()
    assert r.due([s]) == []  # too soon
    clock.t += migration.REAP_EVERY
    assert r.due([s]) == [s]


def test_owner_activity_excludes_homie_jobs():
    cpu = {"busy": 0.0, "total": 0.0}

    def machine():
        return cpu["busy"], cpu["total"]

    w = OwnerWatch(idle_threshold=60, window=3, machine=machine)
    jobs = {"j": 0.0}
    assert not w.sample(jobs)
    for _ in range(5):  # a job keeps both cores busy: not the owner
        cpu["busy"] += 20
        cpu["total"] += 20
        jobs["j"] += 20
        assert not w.sample(jobs)
    results = []
    for _ in range(3):  # the owner takes one of two cores on top of a job on the other
        cpu["busy"] += 20
        cpu["total"] += 20
        jobs["j"] += 10
        results.append(w.sample(jobs))
    assert results == [False, False, True] and round(w.owner_percent) == 50
    w.reset()
    cpu["busy"] += 1
    cpu["total"] += 20
    assert not w.sample(jobs)


def test_links_and_directories_count_toward_the_scan_limit(tmp_path):
    # Each one costs the worker a stat or a walk at every poll: a job that fills its
    # checkpoint directory with links (never taken) must not make every poll that long.
    d = tmp_path / "checkpoint"
    d.mkdir()
    (d / "state.bin").write_bytes(b"x")
    for i in range(4 * checkpoints.MAX_FILES + 1):
        os.symlink("/etc/passwd", d / f"l{i}")
    with pytest.raises(HomieError, match="more than 1024 entries"):
        checkpoints.signature(tmp_path, ["checkpoint"])
    for i in range(4 * checkpoints.MAX_FILES + 1):
        os.unlink(d / f"l{i}")
        os.mkdir(d / f"d{i}")
    with pytest.raises(HomieError, match="more than 1024 entries"):
        checkpoints.signature(tmp_path, ["checkpoint"])
    for i in range(4 * checkpoints.MAX_FILES + 1):
        os.rmdir(d / f"d{i}")
    assert list(checkpoints.signature(tmp_path, ["checkpoint"])) == ["checkpoint/state.bin"]


def test_entries_outside_the_checkpoint_paths_do_not_count(tmp_path):
    (tmp_path / "checkpoint").mkdir()
    (tmp_path / "checkpoint" / "state.bin").write_bytes(b"x")
    (tmp_path / "data").mkdir()
    for i in range(4 * checkpoints.MAX_FILES + 1):
        os.symlink("/etc/passwd", tmp_path / "data" / f"l{i}")
        os.symlink("/etc/passwd", tmp_path / f"top{i}")
    assert list(checkpoints.signature(tmp_path, ["checkpoint"])) == ["checkpoint/state.bin"]


def test_a_job_declares_a_bounded_number_of_checkpoint_paths():
    # Every entry a poll walks is matched against each path: 100,000 declared paths made
    # one scan take 12 s and their duplicate check a minute of the worker's CPU per submit.
    many = [f"ckpt{i}" for i in range(checkpoints.MAX_PATHS - 1)]
    assert checkpoints.normalize(many + many) == ["checkpoint", *many]  # duplicates do not count
    with pytest.raises(ManifestError, match=f"at most {checkpoints.MAX_PATHS - 1} checkpoint paths"):
        checkpoints.normalize(many + ["one-more"])


def test_slow_scans_are_not_repeated_past_the_polls_budget(tmp_path):
    # A job whose checkpoint changes all the time beside a tree that takes a second to
    # scan: the poll gives up after its first pause, as it did before pauses were retried.
    clock = Clock()
    scans = []

    def slow_scan(root, paths):
        clock.t += 1.0
        scans.append(clock.t)
        return {"checkpoint/state.bin": (10, len(scans), 1)}  # changed at every look

    w = Watcher(tmp_path, ["checkpoint"], 10.0, clock=clock, wall=lambda: 5.0, scan=slow_scan,
                sleep=lambda s: None)
    assert not w.poll()
    assert len(scans) == 2
