"""A hostile peer on the other end of the transfer engine (homie.files.engine).

Each test plays the malicious side over a real socket pair against the real
receiving code: the worker's `_receive_blobs` into its BlobCache (a malicious
submitter), the submitter's `transfer.download` into its staging directory
and `checkpoints.fetch` into its store (a malicious worker), and the bare
engine Receiver. The defence asserted each time: nothing lands outside the
cache / staging directory, nothing unverified gets its final name, the
staging file is gone, no more is written than was announced, the buffer pool
comes back whole and the engine's threads are gone, memory stays bounded.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from homie import checkpoints
from homie.errors import HomieError, ManifestError, ProtocolError
from homie.files import BlobCache, engine
from homie.files.engine import FRAME
from homie.submit import transfer
from homie.wire import protocol
from homie.wire.channel import Channel, ConnectionClosed, Conversation
from homie.worker import session as worker_session


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def engine_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name in ("recv-hash", "recv-write", "send-read"))


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = engine_threads()
    yield
    deadline = time.monotonic() + 5
    while engine_threads() != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine_threads() == before, "the engine left threads behind"


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    evil, victim = Channel(a), Channel(b)
    yield evil, victim
    evil.close()
    victim.close()


def frames(ch: Channel, data: bytes, size: int = FRAME) -> None:
    for i in range(0, len(data), size):
        ch.send_data(data[i : i + size])


def raw_data_header(ch: Channel, n: int) -> None:
    """A DATA frame header only; its payload is up to the caller (or never comes)."""
    ch.sock.sendall(protocol.HEADER.pack(n, protocol.DATA))


def play(fn) -> threading.Thread:
    """Run the hostile side in a thread; it stops quietly when the victim hangs up."""
    def run():
        try:
            fn()
        except (ConnectionClosed, OSError, ProtocolError):
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ----------------------------------------------------------------------------- the bare engine


class Recording:
    """A sink that counts what it was given (optionally slowly)."""

    def __init__(self, delay: float = 0.0):
        self.got = 0
        self.state = "open"
        self.delay = delay

    def write(self, view):
        if self.delay:
            time.sleep(self.delay)
        self.got += len(view)

    def commit(self, digest):
        self.state = "committed"

    def abort(self):
        self.state = "aborted"


def test_after_any_failure_the_pool_is_whole_and_the_receiver_still_works(pair):
    """TooLong, CutShort, Corrupted, a timeout: every buffer comes back, and the
    same receiver takes the next good stream (nothing of the bad one left queued)."""
    evil, victim = pair
    good = os.urandom(FRAME + 5)
    with engine.Receiver(victim, timeout=0.5) as rx:
        attacks = [
            (engine.TooLong, lambda: frames(evil, os.urandom(FRAME)), FRAME - 1),  # a frame past the size
            (engine.CutShort, lambda: (frames(evil, os.urandom(10)), evil.send("upload_done")), 20),
            (engine.Corrupted, lambda: frames(evil, os.urandom(3 * FRAME)), 3 * FRAME),
            (TimeoutError, lambda: frames(evil, os.urandom(100)), 200),  # then silence
        ]
        for err, attack, size in attacks:
            t = play(attack)
            sink = Recording()
            with pytest.raises(err):
                rx.receive(size, sha(b"x"), sink)
            assert sink.state == "aborted" and sink.got <= size
            assert rx._free.qsize() == rx._made, f"{err.__name__}: buffers lost"
            # drain whatever the attack still had on the wire
            victim.sock.settimeout(0.2)
            try:
                while t.is_alive() or victim.sock.recv(1 << 20):
                    victim.sock.recv(1 << 20)
            except (TimeoutError, BlockingIOError):
                pass
            t.join(5)
        t = play(lambda: frames(evil, good))
        sink = Recording()
        assert rx.receive(len(good), sha(good), sink) == sha(good)
        assert sink.state == "committed" and sink.got == len(good)
        t.join(5)


def test_a_frame_bigger_than_the_receivers_buffers_cannot_desynchronise_the_stream(pair):
    """The receiving pool's buffers must hold any DATA frame the wire allows:
    a smaller buffer would take part of a frame and read the rest of its
    payload as the next frame header (the sender chooses those bytes)."""
    evil, victim = pair
    try:
        rx = engine.Receiver(victim, timeout=2, frame=4096)
    except ValueError:
        return  # refused up front: the defence
    with rx:
        inner = protocol.encode_msg("upload_done")
        payload = b"\0" * 4096 + inner  # what lies past the buffer is a whole frame of the attacker's
        evil.send_data(payload)
        with pytest.raises((engine.TransferError, ProtocolError)):
            # 4096 bytes announced and hashed: only a frame cut to the buffer would match them
            rx.receive(4096, sha(payload[:4096]), Recording())


def test_a_peer_that_stops_mid_frame_times_out_and_the_threads_end(pair):
    """Half a frame, then nothing: the receiving thread gives up after its
    timeout, the write thread lets go of the sink, close() joins both."""
    evil, victim = pair
    raw_data_header(evil, FRAME)
    evil.sock.sendall(b"a" * 1000)
    sink = Recording()
    rx = engine.Receiver(victim, timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        rx.receive(FRAME, sha(b"a" * FRAME), sink)
    assert time.monotonic() - t0 < 5
    assert sink.state == "aborted" and rx._free.qsize() == rx._made
    rx.close()
    assert not any(t.is_alive() for t in rx._threads)


def test_a_fast_sender_into_a_slow_sink_is_held_by_the_pool(pair):
    """1 GiB sent as fast as the socket takes it, into a sink that writes
    slowly at first: the receiver blocks on its pool (backpressure), it never
    queues frames beyond it. Peak allocation is the pool, not the stream."""
    evil, victim = pair
    piece = os.urandom(FRAME)
    n = 1024  # 1 GiB
    h = hashlib.sha256()
    for _ in range(n):
        h.update(piece)

    class SlowThenFast(Recording):
        def write(self, view):
            if self.got < 64 * FRAME:
                time.sleep(0.01)  # 64 frames slowly: the sender is far ahead all that time
            self.got += len(view)

    def send():
        for _ in range(n):
            evil.send_data(piece)

    def rss_kb(field="VmRSS"):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    rss0 = rss_kb()
    tracemalloc.start()
    try:
        t = play(send)
        sink = SlowThenFast()
        with engine.Receiver(victim, timeout=30) as rx:
            rx.receive(n * FRAME, h.hexdigest(), sink)
            queued = max(rx._hq.qsize(), rx._wq.qsize())
        t.join(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss1 = rss_kb()
    print(f"\npeak traced {peak / FRAME:.1f} MiB, VmRSS {rss0 // 1024} -> {rss1 // 1024} MiB for a 1 GiB stream")
    assert sink.got == n * FRAME and queued == 0
    assert peak < 2 * engine.BUFFERS * FRAME, f"peak {peak / FRAME:.1f} MiB"
    assert rss1 - rss0 < 64 * 1024, f"VmRSS grew {(rss1 - rss0) // 1024} MiB"


# ----------------------------------------------------------------------------- a malicious submitter (upload)


@pytest.fixture
def worker(tmp_path):
    cache = BlobCache(tmp_path / "blobs", max_bytes=1 << 30, fsync=False)
    return SimpleNamespace(blobs=cache, root=tmp_path)


def receive_upload(worker, victim: Channel, need: dict[str, int], timeout: float = 5.0):
    """The worker's real _receive_blobs for the blobs in `need` (sha -> size)."""
    s = worker_session.Session(worker)
    old = worker_session.FRAME_TIMEOUT
    worker_session.FRAME_TIMEOUT = timeout
    try:
        s._receive_blobs(victim, set(need), dict(need))
    finally:
        worker_session.FRAME_TIMEOUT = old


def assert_cache_clean(worker, allowed: set[str] = frozenset()) -> None:
    cache = worker.blobs
    assert os.listdir(cache._tmp) == [], "a staging file was left behind"
    stored = {p.name for p in cache.dir.glob("??/*")}
    assert stored <= set(allowed), f"unverified blobs got their name: {stored - set(allowed)}"
    outside = sorted(p for p in worker.root.rglob("*") if not str(p).startswith(str(cache.dir)))
    assert outside == [], f"written outside the cache: {outside}"


BLOB = os.urandom(FRAME + 1000)
BLOB_SHA = sha(BLOB)


@pytest.mark.parametrize("attack", [
    "longer", "shorter_then_done", "shorter_then_blob", "wrong_bytes", "msg_mid_blob", "cut_mid_blob",
    "cut_mid_frame", "stalls",
])
def test_a_bad_blob_never_gets_its_name_and_its_staging_file_goes(worker, pair, attack):
    evil, victim = pair

    def submitter():
        evil.send("blob", sha256=BLOB_SHA, size=len(BLOB))
        if attack == "longer":
            frames(evil, BLOB + b"!")
        elif attack == "shorter_then_done":
            frames(evil, BLOB[:-1])
            evil.send("upload_done")
        elif attack == "shorter_then_blob":
            frames(evil, BLOB[:-1])
            evil.send("blob", sha256=BLOB_SHA, size=len(BLOB))
        elif attack == "wrong_bytes":
            frames(evil, BLOB[:-1] + b"\0")
        elif attack == "msg_mid_blob":
            frames(evil, BLOB[:FRAME])
            evil.send("upload_done")
            frames(evil, BLOB[FRAME:])
        elif attack == "cut_mid_blob":
            frames(evil, BLOB[:FRAME])
            evil.close()
        elif attack == "cut_mid_frame":
            frames(evil, BLOB[:FRAME])
            raw_data_header(evil, 1000)
            evil.sock.sendall(BLOB[FRAME : FRAME + 10])
            evil.close()
        elif attack == "stalls":
            frames(evil, BLOB[:FRAME])
        evil.send("upload_done")

    t = play(submitter)
    with pytest.raises((ManifestError, ProtocolError, ConnectionClosed, TimeoutError)):
        receive_upload(worker, victim, {BLOB_SHA: len(BLOB)}, timeout=0.5)
    t.join(5)
    assert_cache_clean(worker)


def test_a_wrong_size_for_a_cached_blob_never_takes_it_from_a_job(worker, pair):
    """A submitter declaring a cached file with another size must not make the worker drop
    the cached copy while another job is being built from it (that job failed with
    "cannot prepare the job directory"): it is asked for the file, its upload fails the
    hash check, and the cached blob is still there, whole."""
    evil, victim = pair
    with worker.blobs.writer(BLOB_SHA, len(BLOB)) as w:
        w.write(BLOB)
    s = worker_session.Session(worker)
    with worker.blobs.pinned([BLOB_SHA]):  # another job's build holds it
        assert s._have(BLOB_SHA, len(BLOB)) is True
        assert s._have(BLOB_SHA, len(BLOB) - 1) is False  # so the liar has to send it
        t = play(lambda: (evil.send("blob", sha256=BLOB_SHA, size=len(BLOB) - 1), frames(evil, BLOB[:-1]),
                          evil.send("upload_done")))
        with pytest.raises(ManifestError):
            receive_upload(worker, victim, {BLOB_SHA: len(BLOB) - 1})
        t.join(5)
        assert worker.blobs.has(BLOB_SHA)
        assert worker.blobs.path(BLOB_SHA).read_bytes() == BLOB
    assert_cache_clean(worker, allowed={BLOB_SHA})


@pytest.mark.parametrize("head", [
    {"sha256": "../../../../escape" + "0" * 46, "size": 4},
    {"sha256": "/tmp/" + "0" * 59, "size": 4},
    {"sha256": "A" * 64, "size": 4},
    {"sha256": sha(b"nobody asked"), "size": 12},
    {"sha256": BLOB_SHA, "size": 2**62},
    {"sha256": BLOB_SHA, "size": -1},
    {"sha256": BLOB_SHA, "size": len(BLOB) - 1},
    {"sha256": BLOB_SHA, "size": float(len(BLOB))},
])
def test_a_blob_head_the_worker_did_not_ask_for_is_refused_before_any_byte(worker, pair, head):
    evil, victim = pair
    evil.sock.sendall(protocol.encode_msg("blob", **head))
    frames(evil, b"data")  # small: fits the socket buffer
    with pytest.raises((ManifestError, ProtocolError)):
        receive_upload(worker, victim, {BLOB_SHA: len(BLOB)})
    assert_cache_clean(worker)


def test_bool_sizes_never_pass_as_one(worker, pair):
    """JSON true == 1 in Python: the wire schema refuses it before the worker compares sizes."""
    evil, victim = pair
    one = b"x"
    evil.sock.sendall(protocol.encode_msg("blob", sha256=sha(one), size=True))
    frames(evil, one)
    with pytest.raises((ManifestError, ProtocolError)):
        receive_upload(worker, victim, {sha(one): 1})
    assert_cache_clean(worker)


def test_the_same_blob_twice_or_one_more_than_asked_is_refused(worker, pair):
    evil, victim = pair
    a, b = b"first", b""

    def submitter():
        for data in (a, b, a):  # a again: asked once, so refused
            evil.send("blob", sha256=sha(data), size=len(data))
            frames(evil, data)
        evil.send("upload_done")

    t = play(submitter)
    with pytest.raises(ManifestError, match="not asked for"):
        receive_upload(worker, victim, {sha(a): len(a), sha(b): 0})
    t.join(5)
    # the two good ones (one of them empty) were verified and stored; nothing else
    assert_cache_clean(worker, {sha(a), sha(b)})
    assert worker.blobs.path(sha(b)).stat().st_size == 0


def test_upload_done_with_blobs_missing_is_refused(worker, pair):
    evil, victim = pair
    evil.send("upload_done")
    with pytest.raises(ManifestError, match="missing"):
        receive_upload(worker, victim, {BLOB_SHA: len(BLOB)})
    assert_cache_clean(worker)


def test_a_data_frame_where_a_blob_head_belongs_is_refused(worker, pair):
    evil, victim = pair
    frames(evil, BLOB[:100])
    with pytest.raises(ProtocolError):
        receive_upload(worker, victim, {BLOB_SHA: len(BLOB)})
    assert_cache_clean(worker)


# ----------------------------------------------------------------------------- a malicious worker (results)


def fake_job(tmp_path: Path):
    d = tmp_path / "home" / "jobs" / "j1"
    d.mkdir(parents=True, exist_ok=True)
    rec: dict = {}
    return SimpleNamespace(
        wire_id="j1", token=None, peer_name="evil", dir=d, results_dir=d / "results", progress=None,
        update=rec.update, rec=rec, results_told=None,
    )


def _results_pair():
    a, b = socket.socketpair()
    server = Channel(a, Conversation(protocol.SERVER))
    client = Channel(b, Conversation(protocol.CLIENT))
    server.send("hello", name="w", proto=1, homie="x", python="3")
    client.recv_msg("hello")
    return server, client


def download_from(tmp_path: Path, evil_worker, timeout: float = 2.0, results_told: int | None = None):
    job = fake_job(tmp_path)
    job.results_told = results_told
    server, client = _results_pair()
    t = play(lambda: evil_worker(server, job))
    old = transfer.STREAM_TIMEOUT
    transfer.STREAM_TIMEOUT = timeout
    try:
        transfer.download(job, client, lambda j: None)
        return job, None
    except (HomieError, ConnectionClosed, TimeoutError) as e:
        return job, e
    finally:
        transfer.STREAM_TIMEOUT = old
        client.close()
        t.join(5)
        server.close()


def entry(path: str, data: bytes, mode: int = 0o644) -> dict:
    return {"path": path, "mode": mode, "size": len(data), "sha256": sha(data)}


def serve_results(manifest: list[dict], blobs: list[tuple[dict, bytes]], before=None, end=True):
    def worker(ch: Channel, job) -> None:
        ch.recv_msg("fetch")
        ch.send("results", job_id="j1", files=manifest)
        ch.recv_msg("want")
        if before is not None:
            before(job)
        for head, data in blobs:
            ch.send("blob", **head)
            frames(ch, data)
        if end:
            ch.send("results_done")
            ch.recv_msg("ack")
            ch.send("ok")
    return worker


def outside_of(job) -> list[str]:
    """Files under the submitter's home that are neither the staging dir nor results/."""
    home = job.dir.parents[1]
    return [p for p in listing(home) if not p.startswith(("jobs/j1/.incoming", "jobs/j1/results"))
            and p not in ("jobs", "jobs/j1")]


@pytest.mark.parametrize("path", ["../escape", "/tmp/escape", "a/../../escape", ".homie/x", "a\\..\\b", "a/./b"])
def test_result_paths_that_escape_are_refused_before_anything_is_written(tmp_path, path):
    data = b"pwned"
    e = entry(path, data)
    job, err = download_from(tmp_path, serve_results([e], [({"sha256": e["sha256"], "size": 5}, data)]))
    assert isinstance(err, HomieError) and "unsafe result list" in str(err)
    assert not job.results_dir.exists() and outside_of(job) == []
    assert not (tmp_path / "escape").exists() and not Path("/tmp/escape").exists()


def test_duplicate_result_paths_are_refused(tmp_path):
    data = b"x"
    e = entry("out.txt", data)
    job, err = download_from(tmp_path, serve_results([e, e], [(e, data), (e, data)]))
    assert isinstance(err, HomieError) and "duplicate" in str(err)
    assert not job.results_dir.exists()


def test_a_result_streamed_forever_stops_at_its_declared_size(tmp_path):
    """The worker announces 10 bytes and then streams 64 MiB: the submitter
    writes at most 10 bytes, refuses the rest, and nothing becomes a result."""
    data = b"0123456789"
    e = entry("out.txt", data)
    endless = data + os.urandom(64 * FRAME)
    job, err = download_from(tmp_path, serve_results([e], [({"sha256": e["sha256"], "size": 10}, endless)]))
    assert isinstance(err, (ProtocolError, ConnectionClosed)), err
    assert not job.results_dir.exists()
    staged = [p for p in (job.dir / ".incoming").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in staged) <= 10


def test_more_result_bytes_in_aligned_frames_are_refused(tmp_path):
    """Exactly the announced size in one frame, then more frames: the extra
    frame is not taken as the next file."""
    a, b = os.urandom(FRAME), b"second"
    ea, eb = entry("a", a), entry("b", b)
    job, err = download_from(tmp_path, serve_results([ea, eb], [(ea, a + os.urandom(FRAME)), (eb, b)]))
    assert isinstance(err, (ProtocolError, HomieError)), err
    assert not job.results_dir.exists()


def test_a_result_head_that_differs_from_the_manifest_is_refused(tmp_path):
    data = b"hello"
    e = entry("out.txt", data)
    for head in ({"sha256": sha(b"other"), "size": 5}, {"sha256": e["sha256"], "size": 6},
                 {"sha256": e["sha256"], "size": 2**62}):
        job, err = download_from(tmp_path / str(len(str(head))) / str(head["size"]),
                                 serve_results([e], [(head, data)]))
        assert isinstance(err, (ProtocolError, HomieError)), err
        assert not job.results_dir.exists()


def test_a_corrupted_result_never_becomes_a_result_and_its_staged_bytes_go(tmp_path):
    """Bytes that fail their hash are refused, and are not kept in the
    staging directory either (a worker could otherwise leave up to the
    manifest's 64 GiB of junk behind until the job ends)."""
    data = os.urandom(3 * FRAME)
    e = entry("out.bin", data)
    job, err = download_from(tmp_path, serve_results([e], [(e, os.urandom(3 * FRAME))]))
    assert isinstance(err, HomieError) and "corrupted" in str(err)
    assert not job.results_dir.exists()
    staged = [p for p in (job.dir / ".incoming").rglob("*") if p.is_file()] if (job.dir / ".incoming").exists() else []
    assert staged == [], f"corrupted bytes kept: {staged}"


def test_a_result_cut_short_leaves_no_result(tmp_path):
    data = os.urandom(2 * FRAME)
    e = entry("out.bin", data)

    def worker(ch, job):
        serve_results([e], [], end=False)(ch, job)
        ch.send("blob", sha256=e["sha256"], size=e["size"])
        frames(ch, data[:FRAME])
        ch.close()

    job, err = download_from(tmp_path, worker)
    assert isinstance(err, (ConnectionClosed, ProtocolError)), err
    assert not job.results_dir.exists()
    staged = [p for p in (job.dir / ".incoming").rglob("*") if p.is_file()] if (job.dir / ".incoming").exists() else []
    assert staged == [], f"partial bytes kept: {staged}"


def test_a_symlink_planted_in_staging_mid_download_is_not_followed(tmp_path):
    """Not possible from the wire; played as a race: after the `want`, a link
    appears at staging/d. Writing d/x must fail, not land in the link's target."""
    outside = tmp_path / "outside"
    outside.mkdir()
    data = b"pwned"
    e = entry("d/x", data)

    def plant(job):
        (job.dir / ".incoming" / "d").symlink_to(outside)

    job, err = download_from(tmp_path, serve_results([e], [(e, data)], before=plant))
    assert isinstance(err, HomieError) and "symlink" in str(err)
    assert list(outside.iterdir()) == []
    assert not job.results_dir.exists()


def test_zero_length_results_arrive(tmp_path):
    e, f = entry("empty", b""), entry("dir/also-empty", b"", 0o755)
    job, err = download_from(tmp_path, serve_results([e, f], [(e, b""), (f, b"")]))
    assert err is None
    assert (job.results_dir / "empty").stat().st_size == 0
    assert os.stat(job.results_dir / "dir" / "also-empty").st_mode & 0o777 == 0o755


def test_a_job_its_worker_said_made_no_result_costs_only_the_ack(tmp_path):
    seen = []

    def worker(ch: Channel, job) -> None:
        # Straight from rest: a fetch here would be refused by this end's state machine.
        seen.append(ch.recv_msg("fetch", "ack").t)
        ch.send("ok")

    old = tmp_path / "home" / "jobs" / "j1" / "results"
    old.mkdir(parents=True)
    (old / "from-before").write_text("x")
    job, err = download_from(tmp_path, worker, results_told=0)
    assert err is None and seen == ["ack"]
    assert job.rec["results"] == [] and not job.results_dir.exists()
    # Unknown (a restart in between) or some: the whole fetch, as before.
    e = entry("r", b"data")
    job, err = download_from(tmp_path / "again", serve_results([e], [(e, b"data")]), results_told=None)
    assert err is None and (job.results_dir / "r").read_bytes() == b"data"


# ----------------------------------------------------------------------------- a malicious worker (checkpoints)


def _fetch_checkpoint(tmp_path: Path, manifest: list[dict], send):
    store = checkpoints.Store(tmp_path / "home" / "jobs" / "j1" / "checkpoint", ["checkpoint"])
    server, client = _results_pair()

    def worker():
        server.recv_msg("ckpt_fetch")
        server.send("ckpt", job_id="j1", seq=1, at=1.0, files=manifest)
        want = server.recv_msg("ckpt_want")["chunks"]
        send(server, want)

    t = play(worker)
    old = checkpoints.exchange.FRAME_TIMEOUT
    checkpoints.exchange.FRAME_TIMEOUT = 1.0
    try:
        with pytest.raises((HomieError, ConnectionClosed, TimeoutError)):
            checkpoints.fetch(client, "j1", {}, store, 1)
    finally:
        checkpoints.exchange.FRAME_TIMEOUT = old
        client.close()
        t.join(5)
        server.close()
    return store


@pytest.mark.parametrize("attack", ["longer", "wrong", "cut", "stall", "other_chunk"])
def test_a_bad_checkpoint_chunk_leaves_the_store_as_it_was(tmp_path, attack):
    data = os.urandom(FRAME)
    m = [{"path": "checkpoint/state", "mode": 0o644, "size": len(data), "sha256": sha(data), "chunks": [sha(data)]}]

    def send(ch, want):
        if attack == "other_chunk":
            ch.send("blob", sha256=sha(b"other"), size=len(data))
            frames(ch, data)
            return
        ch.send("blob", sha256=want[0], size=len(data))
        if attack == "longer":
            frames(ch, data)
            frames(ch, b"more")
            ch.send("ckpt_done")
        elif attack == "wrong":
            frames(ch, os.urandom(FRAME))
            ch.send("ckpt_done")
        elif attack == "cut":
            frames(ch, data[:1000])
            ch.close()
        elif attack == "stall":
            raw_data_header(ch, 1000)
            ch.sock.sendall(data[:10])

    store = _fetch_checkpoint(tmp_path, m, send)
    assert store.current() is None
    assert not store.root.exists() or os.listdir(store.root) == [], listing(store.root)


def test_failed_uploads_cannot_grow_the_cache_past_its_cap(tmp_path):
    """Each upload stores good blobs, then sends one bad: the job never runs,
    so no job's eviction follows. Repeated, that would fill the worker's disk
    (64 GiB a try); the cache must be back under its cap after each failure."""
    cap = 2 * FRAME
    cache = BlobCache(tmp_path / "blobs", max_bytes=cap, fsync=False)
    w = SimpleNamespace(blobs=cache, root=tmp_path, me=SimpleNamespace(name="w"))
    for attempt in range(3):
        good = [os.urandom(FRAME) for _ in range(3)]
        bad = os.urandom(100)
        entries = [SimpleNamespace(sha256=sha(d), size=len(d)) for d in [*good, bad]]
        a, b = socket.socketpair()
        evil, victim = Channel(a), Channel(b)

        def submitter(evil=evil, good=good, bad=bad):
            evil.recv_msg("need")
            for d in good:
                evil.send("blob", sha256=sha(d), size=len(d))
                frames(evil, d)
            evil.send("blob", sha256=sha(bad), size=len(bad))
            frames(evil, b"\0" * len(bad))
            evil.recv_msg("error")
            evil.close()

        t = play(submitter)
        with pytest.raises(ConnectionClosed):
            worker_session.Session(w)._accept(victim, SimpleNamespace(), entries, "evil", "10.0.0.1")
        t.join(5)
        victim.close()
        assert cache.total_bytes() <= cap, f"try {attempt}: {cache.total_bytes() // FRAME} MiB cached, cap 2 MiB"
        assert os.listdir(cache._tmp) == []


def test_a_receiver_that_stops_reading_ends_the_send_and_its_reader_thread(pair):
    """The hostile side is the receiver this time (a worker serving results to
    a submitter that asked and then never reads): once the socket's timeout
    runs out the send fails, and the reader thread is gone with its buffers."""
    evil, victim = pair
    victim.sock.settimeout(0.5)
    piece = os.urandom(FRAME)
    sender = engine.Sender(victim)
    t0 = time.monotonic()
    with pytest.raises(ConnectionClosed):
        sender.send([engine.Outgoing(size=256 * FRAME, source=(piece for _ in range(256)))])
    assert time.monotonic() - t0 < 10
    assert sender._free.qsize() == sender._made, "the sender's buffers were not all returned"


def test_empty_data_frames_do_not_keep_a_receiver_spinning(pair):
    """Empty DATA frames cost the sender 5 bytes each and the receiver a full
    round of its threads (measured: one core busy at about 70 000 a second)
    while the stream never gets closer to its size; the engine never sends
    one, so the first one is refused."""
    evil, victim = pair
    empty = protocol.HEADER.pack(0, protocol.DATA)

    def flood():
        for _ in range(20):  # about 3 s of work for the receiver if it takes them
            evil.sock.sendall(empty * 10000)

    t = play(flood)
    sink = Recording()
    with engine.Receiver(victim, timeout=2) as rx, pytest.raises(engine.TransferError, match="empty"):
        rx.receive(10, sha(b"x" * 10), sink)
    assert sink.state == "aborted"
    victim.close()
    t.join(5)


def test_a_peer_dribbling_a_frame_a_byte_at_a_time_is_cut_off(pair):
    """The receiver's timeout bounds a whole frame (Channel.recv's deadline), not each
    gap between bytes: a byte every timeout/2 does not hold a worker's slot for ever."""
    evil, victim = pair

    def dribble():
        raw_data_header(evil, 1000)
        for _ in range(15):
            evil.sock.sendall(b"x")
            time.sleep(0.2)

    t = play(dribble)
    t0 = time.monotonic()
    with engine.Receiver(victim, timeout=0.5) as rx, pytest.raises((TimeoutError, engine.TransferError)):
        rx.receive(1000, sha(b"x" * 1000), Recording())
    victim.close()
    t.join(5)
    assert time.monotonic() - t0 < 2, "a frame took far longer than the receiver's timeout"


def test_a_stream_behind_a_dropped_job_ends(tmp_path):
    """A submitter attaches to a finished job with a lot of output, stops reading, and acks on a
    second connection, so the worker drops the job (its log closed and removed) while the stream
    is behind: the stream ends with unknown_job instead of spinning a core for ever."""
    from homie.joblog import JobLog

    log = JobLog(tmp_path / "j.log")
    for _ in range(3):
        log.append(1, b"x" * (1 << 20))  # the stream sends 1 MiB per read
    log.finish()
    done = threading.Event()
    done.set()
    job = SimpleNamespace(id="j3", start_offset=0, pid=1, gpu_index=None, ckpt=None, done=done, log=log,
                          outcome=None, results=[], evicted_by=None, gpu=False)
    sent = []

    class Slow:
        def send_output(self, stream, end, data):
            sent.append("out")
            if sent.count("out") == 1:  # what Worker.drop does, on the other connection
                log.close()
                os.unlink(log.path)

        def send(self, t, **kw):
            sent.append((t, kw.get("code")))

    s = worker_session.Session(SimpleNamespace(me=SimpleNamespace(name="w")))
    t = threading.Thread(target=s._stream, args=(Slow(), job, 0), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), f"the stream still runs after the job was dropped: {sent[-3:]}"
    assert sent[-1] == ("error", "unknown_job"), sent
