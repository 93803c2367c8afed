"""A followed job's events, typed: OutputEvent, JobEvent and, last, Ended.

Plain classes, like homie.client.records (and for the same start-up reason)."""

from __future__ import annotations

from homie.client.records import JobInfo, _Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


class OutputEvent(_Record):
    """A chunk of a job's output, as it arrives."""

    __slots__ = ("stream", "data", "offset")

    def __init__(self, stream: int, data: bytes, offset: int):
        self.stream = stream   # 1: stdout, 2: stderr
        self.data = data
        self.offset = offset   # the job's log offset just past this chunk (resume a stream from here)

    @property
    def text(self) -> str:
        """The chunk decoded as UTF-8 (undecodable bytes replaced). A chunk may end mid-line."""
        return self.data.decode("utf-8", "replace")

    @property
    def is_stderr(self) -> bool:
        return self.stream == 2


class JobEvent(_Record):
    """A change in a job's life while it is followed.

    kind: "job" (its id), "queued" (why), "sending" (peer, via, files, bytes), "resumed"
    (peer, attempt, checkpoint_at: it runs again after its peer was lost), "started" (peer),
    "progress" (phase, done, total: bytes of an upload or download)."""

    __slots__ = ("kind", "job_id", "peer", "why", "via", "files", "bytes", "attempt", "checkpoint_at", "phase",
                 "done", "total")

    def __init__(self, kind: str, job_id: str | None = None, peer: str | None = None, why: str | None = None,
                 via: str | None = None, files: int | None = None, bytes: int | None = None,
                 attempt: int | None = None, checkpoint_at: float | None = None, phase: str | None = None,
                 done: int | None = None, total: int | None = None):
        self.kind = kind
        self.job_id = job_id
        self.peer = peer
        self.why = why
        self.via = via
        self.files = files
        self.bytes = bytes
        self.attempt = attempt
        self.checkpoint_at = checkpoint_at
        self.phase = phase
        self.done = done
        self.total = total

    @classmethod
    def from_dict(cls, d: dict) -> JobEvent:
        return cls(**cls._known(d))


class Ended(_Record):
    """The last event of a stream: how the job ended (or, for a stream that does not
    follow live, where it stands: info.terminal is then False)."""

    __slots__ = ("info",)

    def __init__(self, info: JobInfo):
        self.info = info


Event = OutputEvent | JobEvent | Ended


def typed(events) -> Iterator[Event]:
    """The daemon's raw events (homie.wire.protocol) as OutputEvent, JobEvent and, last, Ended."""
    from homie.wire import protocol

    for ev in events:
        if isinstance(ev, protocol.Output):
            yield OutputEvent(ev.stream, bytes(ev.data), ev.end)
        elif isinstance(ev, protocol.Message):
            if ev.t == "reply":
                yield Ended(JobInfo.from_dict(ev.body))
            elif ev.t == "event":
                yield JobEvent.from_dict(ev.body)
