"""Following a sent job to the CLI (homie.control.follow): the real Job, JobLog and
Channel over a socketpair; the driver thread's steps are placed at chosen points of
the follower's reads, so each interleaving is run, not hoped for."""

from __future__ import annotations

import socket
import time

import pytest

from homie.control import follow, replies
from homie.joblog import JobLog
from homie.submit.job import Job, JobRecord, JobState
from homie.wire.channel import Channel, ConnectionClosed
from homie.wire.protocol import STDOUT, Output


class _Preempted(JobLog):
    """A job log whose k-th read of `end` by the follower lets the driver run right
    after it: the follower holds the value it read, the driver moves on."""

    def __init__(self, path, k: int, driver):
        self._k, self._reads, self._driver = k, 0, driver
        super().__init__(path)

    @property  # type: ignore[override]
    def end(self) -> int:
        value = self.__dict__["_end"]
        self._reads += 1
        if self._reads == self._k:
            self._driver()
        return value

    @end.setter
    def end(self, value: int) -> None:
        self.__dict__["_end"] = value


def _follow_once(tmp_path, k: int) -> tuple[bytes, replies.Ended, int]:
    job = Job(JobRecord(id="j1", created=time.time(), state=JobState.RUNNING, script="train.py",
                        peer_name="raj", started_at=time.time(), dispatches=1), tmp_path / f"outbox{k}")

    def driver():  # the job's last output is mirrored, then its end recorded: the shadow's order
        job.log.append(STDOUT, b"last words\n")
        job.update(state=JobState.DONE, exit_code=0, code=0)

    log = _Preempted(job.dir / "output.log", k, driver)
    log.append(STDOUT, b"hello\n")
    job.log = log
    a, b = socket.socketpair()
    try:
        ended = follow.sent(Channel(a), job, 0, live=True)
        a.shutdown(socket.SHUT_WR)
        ch, out = Channel(b), b""
        while True:
            try:
                ev = ch.recv(timeout=5)
            except ConnectionClosed:
                return out, ended, log.__dict__["_end"]
            if isinstance(ev, Output):
                out += bytes(ev.data)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("k", range(1, 9))
def test_the_last_output_is_sent_whenever_the_job_ends(tmp_path, k):
    out, reply, log_end = _follow_once(tmp_path, k)
    assert out == b"hello\nlast words\n"
    assert reply.state == "done" and reply.offset == log_end  # where a re-attach would resume
