"""The transfer engine (homie.files.engine) over a real socket pair: bytes
arrive whole and in order, a wrong hash or a stream cut short leaves nothing
under the final name, and memory stays flat whatever the stream's size."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
import tracemalloc

import pytest

from homie.files import BlobCache, engine
from homie.files.engine import FRAME, Outgoing
from homie.wire.channel import Channel, ConnectionClosed


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    tx, rx = Channel(a), Channel(b)
    yield tx, rx
    tx.close()
    rx.close()


def in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


class Memory:
    """A sink that keeps what it was given, and whether it was committed or aborted."""

    def __init__(self):
        self.data = bytearray()
        self.state = "open"

    def write(self, view):
        self.data += view

    def commit(self, digest):
        self.state = "committed"

    def abort(self):
        self.state = "aborted"


SIZES = [0, 1, FRAME - 1, FRAME, FRAME + 1, 5 * FRAME + 7, 3, 2 * FRAME]


def test_streams_arrive_whole_and_in_order_from_files(pair, tmp_path):
    tx, rx = pair
    blobs = [os.urandom(n) for n in SIZES]
    fds = []
    for i, data in enumerate(blobs):
        (tmp_path / f"src{i}").write_bytes(data)
        fds.append(os.open(tmp_path / f"src{i}", os.O_RDONLY))
    # Half from open fds (read at an offset, like a checkpoint chunk), half from openers.
    items = [Outgoing(size=len(d), source=fds[i] if i % 2 else (lambda p=tmp_path / f"src{i}": os.open(p, os.O_RDONLY)),
                      head=("blob", {"sha256": sha(d), "size": len(d)}), sha256=sha(d) if i % 3 else None)
             for i, d in enumerate(blobs)]
    t, out = in_thread(lambda: engine.Sender(tx).send(items))
    got = []
    with engine.Receiver(rx, timeout=10) as r:
        for _ in blobs:
            head = rx.recv_msg("blob", timeout=10)
            sink = Memory()
            assert r.receive(head["size"], head["sha256"], sink) == head["sha256"]
            assert sink.state == "committed"
            got.append(bytes(sink.data))
    t.join(10)
    assert "error" not in out
    assert got == blobs
    for fd in fds:
        os.close(fd)


def test_a_part_of_a_file_is_sent_from_its_offset(pair, tmp_path):
    tx, rx = pair
    data = os.urandom(3 * FRAME)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    part = data[FRAME + 5: 2 * FRAME]
    t, out = in_thread(lambda: engine.Sender(tx).send([Outgoing(size=len(part), source=fd, offset=FRAME + 5,
                                                                  sha256=sha(part))]))
    with engine.Receiver(rx, timeout=10) as r:
        sink = Memory()
        r.receive(len(part), sha(part), sink)
    t.join(10)
    os.close(fd)
    assert bytes(sink.data) == part and "error" not in out


def test_a_hash_mismatch_is_rejected_and_nothing_gets_the_final_name(pair, tmp_path):
    tx, rx = pair
    cache = BlobCache(tmp_path / "blobs", 1 << 30, fsync=False)
    data = os.urandom(3 * FRAME + 11)
    claimed = sha(b"something else")
    t, out = in_thread(lambda: engine.Sender(tx).send([Outgoing(size=len(data), source=[data])]))
    with engine.Receiver(rx, timeout=10) as r, pytest.raises(engine.Corrupted):
        r.receive(len(data), claimed, cache.writer(claimed, len(data), hashed_by_caller=True))
    t.join(10)
    assert not cache.has(claimed)
    assert not cache.path(claimed).exists()
    assert os.listdir(tmp_path / "blobs" / "tmp") == []


def test_the_blob_writer_still_checks_the_digest_it_is_handed(tmp_path):
    cache = BlobCache(tmp_path / "blobs", 1 << 30, fsync=False)
    w = cache.writer(sha(b"abc"), 3, hashed_by_caller=True)
    w.write(b"abd")
    with pytest.raises(Exception, match="does not match"):
        w.commit(sha(b"abd"))
    assert not cache.has(sha(b"abc")) and os.listdir(tmp_path / "blobs" / "tmp") == []


def test_a_stream_cut_short_leaves_nothing(pair, tmp_path):
    tx, rx = pair
    cache = BlobCache(tmp_path / "blobs", 1 << 30, fsync=False)
    data = os.urandom(4 * FRAME)
    # Two frames, then a message where the third should be.
    t, _ = in_thread(lambda: (tx.send_data(data[:FRAME]), tx.send_data(data[FRAME: 2 * FRAME]),
                              tx.send("upload_done")))
    with engine.Receiver(rx, timeout=10) as r, pytest.raises(engine.CutShort, match="2097152 of 4194304"):
        r.receive(len(data), sha(data), cache.writer(sha(data), len(data), hashed_by_caller=True))
    t.join(10)
    assert not cache.has(sha(data)) and os.listdir(tmp_path / "blobs" / "tmp") == []


def test_a_cut_connection_leaves_nothing(pair, tmp_path):
    tx, rx = pair
    cache = BlobCache(tmp_path / "blobs", 1 << 30, fsync=False)
    data = os.urandom(4 * FRAME)
    in_thread(lambda: (tx.send_data(data[:FRAME]), tx.close()))
    with engine.Receiver(rx, timeout=10) as r, pytest.raises(ConnectionClosed):
        r.receive(len(data), sha(data), cache.writer(sha(data), len(data), hashed_by_caller=True))
    assert not cache.has(sha(data)) and os.listdir(tmp_path / "blobs" / "tmp") == []


def test_more_bytes_than_announced_are_refused(pair):
    tx, rx = pair
    tx.send_data(b"x" * 10)
    sink = Memory()
    with engine.Receiver(rx, timeout=10) as r, pytest.raises(engine.TooLong):
        r.receive(5, sha(b"x" * 5), sink)
    assert sink.state == "aborted"


def test_a_write_error_reaches_the_receiver_and_aborts_the_sink(pair):
    tx, rx = pair

    class Full(Memory):
        def write(self, view):
            raise OSError(errno.ENOSPC, "No space left on device")

    data = os.urandom(20 * FRAME)
    t, out = in_thread(lambda: engine.Sender(tx).send([Outgoing(size=len(data), source=[data])]))
    sink = Full()
    with engine.Receiver(rx, timeout=10) as r, pytest.raises(OSError) as e:
        r.receive(len(data), sha(data), sink)
    assert e.value.errno == errno.ENOSPC and sink.state == "aborted"
    rx.close()  # the sender, blocked on a full socket, fails rather than hangs
    t.join(10)
    assert not t.is_alive()


def test_a_source_that_shrank_is_reported_with_its_item(pair, tmp_path):
    tx, rx = pair
    (tmp_path / "f").write_bytes(b"short")
    item = Outgoing(size=3 * FRAME, source=lambda: os.open(tmp_path / "f", os.O_RDONLY), name="f")
    with pytest.raises(engine.Shrank) as e:
        engine.Sender(tx).send([item])
    assert e.value.item is item


def test_a_one_frame_stream_that_changed_is_refused_before_its_header(pair):
    tx, rx = pair
    good = b"a" * 100
    items = [Outgoing(size=100, source=[good], sha256=sha(good), head=("blob", {"sha256": sha(good), "size": 100})),
             Outgoing(size=100, source=[b"b" * 100], sha256=sha(good), name="two",
                      head=("blob", {"sha256": "b" * 64, "size": 100}))]
    with pytest.raises(engine.Changed) as e:
        engine.Sender(tx).send(items)
    assert e.value.item is items[1]
    tx.send("ckpt_done")
    # The first stream went out whole; of the second, nothing: not even its header.
    assert rx.recv_msg("blob", timeout=5)["sha256"] == sha(good)
    assert bytes(rx.recv(timeout=5).data) == good  # type: ignore[union-attr]
    assert rx.recv_msg(timeout=5).t == "ckpt_done"


def test_the_refusal_check_runs_every_k_frames(pair):
    tx, rx = pair
    calls = []
    data = os.urandom(17 * FRAME)
    t, out = in_thread(lambda: engine.Sender(tx).send([Outgoing(size=len(data), source=[data])],
                                                      every=(8, lambda: calls.append(1))))
    with engine.Receiver(rx, timeout=10) as r:
        r.receive(len(data), sha(data), Memory())
    t.join(10)
    assert len(calls) == 2


def test_memory_stays_flat_for_a_big_stream(pair):
    """256 MiB from a generator through sender and receiver: what is allocated
    at the peak is the two buffer pools, not the stream."""
    tx, rx = pair
    piece = os.urandom(256 * 1024)
    n = 1024  # 256 MiB
    size = n * len(piece)
    h = hashlib.sha256()
    for _ in range(n):
        h.update(piece)

    class Count:
        got = 0

        def write(self, view):
            self.got += len(view)

        def commit(self, digest):
            pass

        def abort(self):
            pass

    tracemalloc.start()
    try:
        t, out = in_thread(lambda: engine.Sender(tx).send([Outgoing(size=size, source=(piece for _ in range(n)),
                                                                    sha256=h.hexdigest())]))
        sink = Count()
        with engine.Receiver(rx, timeout=30) as r:
            r.receive(size, h.hexdigest(), sink)
        t.join(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "error" not in out and sink.got == size
    assert peak < 32 * FRAME, f"peak {peak / FRAME:.1f} MiB for a {size / FRAME:.0f} MiB stream"
