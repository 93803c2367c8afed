"""A followed job's events, typed: OutputEvent, JobEvent and, last, Ended."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import fields as _fields

from homie.client.records import JobInfo


@dataclass
class OutputEvent:
    """A chunk of a job's output, as it arrives."""

    stream: int            # 1: stdout, 2: stderr
    data: bytes
    offset: int            # the job's log offset just past this chunk (resume a stream from here)

    @property
    def text(self) -> str:
        """The chunk decoded as UTF-8 (undecodable bytes replaced). A chunk may end mid-line."""
        return self.data.decode("utf-8", "replace")

    @property
    def is_stderr(self) -> bool:
        return self.stream == 2


@dataclass
class JobEvent:
    """A change in a job's life while it is followed.

    kind: "job" (its id), "queued" (why), "sending" (peer, via, files, bytes), "resumed"
    (peer, attempt, checkpoint_at: it runs again after its peer was lost), "started" (peer),
    "progress" (phase, done, total: bytes of an upload or download)."""

    kind: str
    job_id: str | None = None
    peer: str | None = None
    why: str | None = None
    via: str | None = None
    files: int | None = None
    bytes: int | None = None
    attempt: int | None = None
    checkpoint_at: float | None = None
    phase: str | None = None
    done: int | None = None
    total: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> JobEvent:
        known = {f.name for f in _fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Ended:
    """The last event of a stream: how the job ended (or, for a stream that does not
    follow live, where it stands: info.terminal is then False)."""

    info: JobInfo


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
