"""The job output log: records with offsets, torn-tail recovery, waiting."""

from __future__ import annotations

import os
import threading
import time

import pytest

from homie.joblog import MAX_CHUNK, REC, JobLog, read_records
from homie.wire.protocol import STDERR, STDOUT


@pytest.fixture
def log(tmp_path):
    lg = JobLog(tmp_path / "job.log")
    yield lg
    lg.close()


def test_empty_log(log):
    assert log.end == 0
    assert read_records(log.path) == []
    assert os.path.getsize(log.path) == 0


def test_missing_file(tmp_path):
    assert read_records(str(tmp_path / "nope")) == []


def test_round_trip_with_offsets(log):
    chunks = [(STDOUT, b"hello\n"), (STDERR, b"oops\n"), (STDOUT, b""), (STDOUT, b"\0\xff" * 100)]
    ends = [log.append(s, d) for s, d in chunks]
    expected_ends = []
    pos = 0
    for _, d in chunks:
        if d:
            pos += REC.size + len(d)
        expected_ends.append(pos)
    assert ends == expected_ends
    assert log.end == pos == os.path.getsize(log.path)

    recs = read_records(log.path)
    assert recs == [(s, e, d) for (s, d), e in zip(chunks, ends, strict=True) if d]
    # resuming at any record's end offset yields exactly the rest, each byte once
    for i, (_, end, _) in enumerate(recs):
        assert read_records(log.path, end) == recs[i + 1 :]
    assert read_records(log.path, log.end) == []


def test_max_bytes_limits_but_always_makes_progress(log):
    for i in range(10):
        log.append(STDOUT, bytes([i]) * 100)
    recs = read_records(log.path, max_bytes=250)
    assert len(recs) == 3  # stops once ~max_bytes are read
    assert len(read_records(log.path, max_bytes=1)) == 1
    # paging by end offsets reassembles everything
    got, off = [], 0
    while page := read_records(log.path, off, max_bytes=150):
        got += page
        off = page[-1][1]
    assert got == read_records(log.path)
    assert off == log.end


def test_until_bound(log):
    ends = [log.append(STDOUT, b"x" * n) for n in (3, 5, 7)]
    assert [r[1] for r in read_records(log.path, until=ends[1])] == ends[:2]
    assert [r[1] for r in read_records(log.path, until=ends[1] + 1)] == ends[:2]
    assert [r[1] for r in read_records(log.path, until=ends[1] - 1)] == ends[:1]
    assert read_records(log.path, until=0) == []
    assert read_records(log.path, until=ends[0] - 1) == []
    assert [r[1] for r in read_records(log.path, ends[0], until=ends[2])] == ends[1:]
    assert [r[1] for r in read_records(log.path, until=None)] == ends


def test_reopen_continues_offsets(tmp_path):
    path = tmp_path / "job.log"
    a = JobLog(path)
    e1 = a.append(STDOUT, b"one")
    a.close()
    b = JobLog(path)
    assert b.end == e1
    e2 = b.append(STDERR, b"two")
    b.close()
    assert read_records(str(path)) == [(STDOUT, e1, b"one"), (STDERR, e2, b"two")]


@pytest.mark.parametrize("cut", ["header", "payload", "one-byte"])
def test_torn_last_record_is_cut_on_reopen(tmp_path, cut):
    path = tmp_path / "job.log"
    a = JobLog(path)
    e1 = a.append(STDOUT, b"first")
    e2 = a.append(STDERR, b"second record")
    a.close()
    torn = {"header": e1 + 2, "payload": e2 - 4, "one-byte": e1 + 1}[cut]
    os.truncate(path, torn)
    # a reader of the torn file sees only whole records
    assert read_records(str(path)) == [(STDOUT, e1, b"first")]

    b = JobLog(path)
    assert b.end == e1 == os.path.getsize(path)
    e3 = b.append(STDOUT, b"after")
    b.close()
    assert e3 == e1 + REC.size + 5
    # offsets stay aligned: the new record follows the last whole one
    assert read_records(str(path)) == [(STDOUT, e1, b"first"), (STDOUT, e3, b"after")]
    assert read_records(str(path), e1) == [(STDOUT, e3, b"after")]


def test_torn_record_claiming_huge_length(tmp_path):
    path = tmp_path / "job.log"
    a = JobLog(path)
    e1 = a.append(STDOUT, b"ok")
    a.close()
    with open(path, "ab") as f:
        f.write(REC.pack(STDOUT, 2**32 - 1) + b"partial")
    b = JobLog(path)
    assert b.end == e1 == os.path.getsize(path)
    b.close()


def test_large_chunks_split_at_max_chunk(log):
    data = os.urandom(MAX_CHUNK * 2 + 123)
    end = log.append(STDERR, data)
    recs = read_records(log.path, max_bytes=10 * MAX_CHUNK)
    assert [len(d) for _, _, d in recs] == [MAX_CHUNK, MAX_CHUNK, 123]
    assert all(s == STDERR for s, _, _ in recs)
    assert b"".join(d for _, _, d in recs) == data
    assert recs[-1][1] == end == log.end == 3 * REC.size + len(data)
    assert [r[1] for r in recs] == [REC.size + MAX_CHUNK, 2 * (REC.size + MAX_CHUNK), end]


def test_exact_max_chunk_is_one_record(log):
    log.append(STDOUT, b"y" * MAX_CHUNK)
    assert [len(d) for _, _, d in read_records(log.path)] == [MAX_CHUNK]


def test_wait_returns_at_once_when_data_is_there(log):
    end = log.append(STDOUT, b"x")
    t0 = time.monotonic()
    assert log.wait(0, timeout=5) is True
    assert log.wait(end, timeout=0.05) is False  # nothing past end: times out
    assert time.monotonic() - t0 < 2


def _wake_after(fn, delay=0.1):
    t = threading.Timer(delay, fn)
    t.start()
    return t


def test_wait_wakes_on_append(log):
    end = log.append(STDOUT, b"x")
    t = _wake_after(lambda: log.append(STDERR, b"y"))
    t0 = time.monotonic()
    assert log.wait(end, timeout=10) is True
    assert time.monotonic() - t0 < 5
    t.join()
    assert read_records(log.path, end)[0][2] == b"y"


def test_wait_wakes_on_finish(log):
    end = log.append(STDOUT, b"x")
    t = _wake_after(log.finish)
    t0 = time.monotonic()
    assert log.wait(end, timeout=10) is False  # woke, but no new data
    assert time.monotonic() - t0 < 5
    t.join()
    assert log.finished
    # once finished, waiting never blocks
    t0 = time.monotonic()
    assert log.wait(end, timeout=10) is False
    assert time.monotonic() - t0 < 1


def test_concurrent_appends_and_reader(log):
    """A reader following the log by offsets sees every byte once, in order."""
    n = 200

    def writer(stream):
        for i in range(n):
            log.append(stream, f"{stream}:{i};".encode())

    threads = [threading.Thread(target=writer, args=(s,)) for s in (STDOUT, STDERR)]
    for t in threads:
        t.start()
    got = {STDOUT: b"", STDERR: b""}
    off = 0
    done = False
    while True:
        for s, end, d in read_records(log.path, off, until=log.end):
            got[s] += d
            off = end
        if done:
            break
        if all(not t.is_alive() for t in threads):
            done = True
        else:
            log.wait(off, timeout=0.05)
    for t in threads:
        t.join()
    assert off == log.end
    for s in (STDOUT, STDERR):
        assert got[s] == b"".join(f"{s}:{i};".encode() for i in range(n))


def test_a_log_of_empty_records_is_read_within_the_budget(tmp_path):
    # A log swapped for /dev/zero reads as endless empty records: each read must
    # stop at its byte budget (headers count), not grow a list without bound.
    p = tmp_path / "zeros.log"
    p.write_bytes(b"\0" * (REC.size * 100_000))
    recs = read_records(str(p), 0, max_bytes=1000)
    assert 0 < len(recs) <= 1000 // REC.size + 1
    assert all(data == b"" for _, _, data in recs)


def test_read_goes_through_the_held_descriptor(tmp_path):
    log = JobLog(tmp_path / "out.log")
    log.append(1, b"hello")
    os.rename(log.path, tmp_path / "moved.log")  # whatever lies at the path now is not read
    (tmp_path / "out.log").write_bytes(b"\1\0\0\0\5xxxxx\1\0\0\0\5yyyyy")
    assert [d for _, _, d in log.read(0)] == [b"hello"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_finished_jobs_log_holds_no_descriptor(tmp_path):
    """A submitting daemon keeps every job it ever sent: their logs must not each hold a
    descriptor (a daemon had 9,800 open after a few thousand map inputs)."""
    before = _open_fds()
    logs = []
    for i in range(50):
        lg = JobLog(tmp_path / f"{i}.log")
        lg.append(STDOUT, b"out\n")
        lg.close()  # the job ended
        logs.append(lg)
    again = [JobLog(tmp_path / f"{i}.log", ended=True) for i in range(50)]  # the daemon restarted
    assert _open_fds() == before
    assert all(lg.end == REC.size + 4 and lg.finished for lg in again)
    assert read_records(again[7].path) == [(STDOUT, REC.size + 4, b"out\n")]
    # Written to again (a late line): a descriptor opens, the record lands after the old ones.
    assert again[7].append(STDERR, b"late\n") == 2 * REC.size + 9
    assert [r[2] for r in read_records(again[7].path)] == [b"out\n", b"late\n"]
    again[7].close()
    assert _open_fds() == before


def test_a_closed_log_is_not_read_by_path_or_recreated(tmp_path):
    lg = JobLog(tmp_path / "job.log")
    lg.append(STDOUT, b"x")
    lg.close()
    os.unlink(lg.path)  # the worker drops the job
    assert lg.read(0) == []
    assert not os.path.exists(lg.path)


def test_a_log_never_opens_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.symlink(target, tmp_path / "job.log")
    with pytest.raises(OSError):
        JobLog(tmp_path / "job.log")
    lg = JobLog(tmp_path / "job.log", ended=True)
    with pytest.raises(OSError):
        lg.append(STDOUT, b"into the link")
    assert target.read_bytes() == b""


def test_a_read_uses_a_descriptor_of_its_own(tmp_path):
    """read() parses from its own duplicate: a close() on another thread cannot free the number
    for the next file opened (another job's log) in the middle of a read."""
    lg = JobLog(tmp_path / "job.log")
    lg.append(STDOUT, b"x" * 10)
    before = _open_fds()
    assert [d for _, _, d in lg.read(0)] == [b"x" * 10]
    assert _open_fds() == before
    lg.close()
    assert lg.closed and lg.read(0) == []
