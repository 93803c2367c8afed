"""The wire protocol, sans-IO: bytes in, events out; no sockets here.

A frame is a 5-byte header (`!IB`: payload length, frame type) and a payload.
Three frame types:

- MSG: a JSON object with a "t" field naming the message (see homie.wire.messages)
- DATA: raw bytes of the file currently being transferred (no base64)
- OUT: job output, `!BQ` (stream, log offset just past this chunk) + raw bytes

The length is checked against the cap for its type *before* the payload is
read, so a hostile 4 GiB header costs the reader nothing.

`Conversation` is the job channel's state machine. Both ends run the same
machine and feed it every frame they send and receive; anything out of order
raises ProtocolError, which the I/O layer turns into closing the connection.
"""

from __future__ import annotations

import json
import struct

from homie.errors import ProtocolError
from homie.wire import messages

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from typing import Any

HEADER = struct.Struct("!IB")
OUT_HEADER = struct.Struct("!BQ")

MSG = 1
DATA = 2
OUT = 3

MAX_MSG = 1 << 20
MAX_DATA = 1 << 20
MAX_OUT = (1 << 20) + OUT_HEADER.size
_CAPS = {MSG: MAX_MSG, DATA: MAX_DATA, OUT: MAX_OUT}

# Output streams carried in OUT frames and job logs.
STDOUT = 1
STDERR = 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}


class _Event:
    """Plain slotted classes: dataclasses cost milliseconds of import time,
    and the CLI imports this module on every run."""

    __slots__: tuple[str, ...] = ()

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, _Event) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *(repr(v) for v in self._key())))

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({args})"


class Message(_Event):
    __slots__ = ("t", "body")

    def __init__(self, t: str, body: dict[str, Any]):
        self.t = t
        self.body = body

    def __getitem__(self, key: str) -> Any:
        return self.body[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


class Data(_Event):
    __slots__ = ("data",)

    def __init__(self, data: bytes | memoryview):
        self.data = data


class Output(_Event):
    __slots__ = ("stream", "end", "data")

    def __init__(self, stream: int, end: int, data: bytes):
        self.stream = stream
        self.end = end  # log offset just past this chunk: where a reconnect resumes
        self.data = data


Event = Message | Data | Output


# -- encoding ---------------------------------------------------------------


def encode_msg(t: str, **fields: Any) -> bytes:
    fields["t"] = t
    payload = json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()
    if len(payload) > MAX_MSG:
        raise ProtocolError(f"message {t!r} too large ({len(payload)} bytes)")
    return HEADER.pack(len(payload), MSG) + payload


def data_header(n: int) -> bytes:
    """Header of a DATA frame; the caller sends the chunk itself right after,
    so file bytes are never copied into a new buffer."""
    if n > MAX_DATA:
        raise ProtocolError(f"data chunk too large ({n} bytes)")
    return HEADER.pack(n, DATA)


def encode_output(stream: int, end: int, data: bytes) -> bytes:
    n = OUT_HEADER.size + len(data)
    if n > MAX_OUT:
        raise ProtocolError(f"output chunk too large ({len(data)} bytes)")
    return HEADER.pack(n, OUT) + OUT_HEADER.pack(stream, end) + data


def encode(event: Event) -> bytes:
    if isinstance(event, Message):
        return encode_msg(event.t, **event.body)
    if isinstance(event, Data):
        return data_header(len(event.data)) + bytes(event.data)
    return encode_output(event.stream, event.end, event.data)


# -- decoding ---------------------------------------------------------------


def parse_header(header: bytes) -> tuple[int, int]:
    """(length, type) of a frame header, or ProtocolError before any payload is read."""
    if len(header) != HEADER.size:
        raise ProtocolError("truncated frame header")
    length, ftype = HEADER.unpack(header)
    cap = _CAPS.get(ftype)
    if cap is None:
        raise ProtocolError(f"unknown frame type {ftype}")
    if length > cap:
        raise ProtocolError(f"frame of {length} bytes exceeds the {cap}-byte limit")
    return length, ftype


def decode_payload(ftype: int, payload: bytes | memoryview) -> Event:
    if ftype == DATA:
        return Data(payload)
    if ftype == OUT:
        if len(payload) < OUT_HEADER.size:
            raise ProtocolError("truncated output frame")
        stream, end = OUT_HEADER.unpack_from(payload)
        if stream not in STREAM_NAMES:
            raise ProtocolError(f"unknown output stream {stream}")
        return Output(stream, end, bytes(payload[OUT_HEADER.size :]))
    if ftype == MSG:
        try:
            obj = json.loads(bytes(payload))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ProtocolError(f"malformed message: {type(e).__name__}") from None
        if not isinstance(obj, dict):
            raise ProtocolError("malformed message: not an object")
        t = obj.pop("t", None)
        if not isinstance(t, str):
            raise ProtocolError("malformed message: no type")
        messages.validate(t, obj)
        return Message(t, obj)
    raise ProtocolError(f"unknown frame type {ftype}")


class FrameDecoder:
    """Incremental decoder: feed() any slicing of a byte stream, get events.

    Memory is bounded by the frame caps: at most one partial frame is held.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need: tuple[int, int] | None = None

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER.size:
                    break
                self._need = parse_header(bytes(self._buf[: HEADER.size]))
                del self._buf[: HEADER.size]
            length, ftype = self._need
            if len(self._buf) < length:
                break
            payload = bytes(self._buf[:length])
            del self._buf[:length]
            self._need = None
            events.append(decode_payload(ftype, payload))
        return events

    @property
    def pending(self) -> int:
        return len(self._buf)


# -- the job channel's state machine ----------------------------------------

CLIENT = "client"
SERVER = "server"

# States of one job-channel conversation.
START = "START"  # waiting for the server's hello
IDLE = "IDLE"  # ready for a request
NEGOTIATE = "NEGOTIATE"  # submit sent, waiting for need/refuse
UPLOAD = "UPLOAD"  # client sending the blobs the server lacks
STARTING = "STARTING"  # upload done, server preparing (venv) and starting the job
STREAM = "STREAM"  # job output flowing until exit
RESULTS = "RESULTS"  # fetch sent, waiting for the result manifest
WANT = "WANT"  # manifest received, client says which files it wants
DOWNLOAD = "DOWNLOAD"  # server sending result blobs
CHECKPOINT = "CHECKPOINT"  # ckpt_fetch sent, waiting for the checkpoint's manifest
CKPT_WANT = "CKPT_WANT"  # manifest received, client says which chunks it lacks
DRAIN = "DRAIN"  # the server refused an upload: what the client still had in flight is read and dropped
REPLY = "REPLY"  # a one-shot request (ack, signal) waiting for ok/error
CLOSED = "CLOSED"

_S, _C = SERVER, CLIENT
# (state, sender, kind) -> next state. kind is a message type, "data" or "output".
TRANSITIONS: dict[tuple[str, str, str], str] = {
    (START, _S, "hello"): IDLE,
    (START, _S, "error"): CLOSED,
    (IDLE, _C, "submit"): NEGOTIATE,
    (IDLE, _C, "attach"): STREAM,
    (IDLE, _C, "fetch"): RESULTS,
    (IDLE, _C, "ack"): REPLY,
    (IDLE, _C, "signal"): REPLY,
    (IDLE, _C, "bye"): CLOSED,
    (IDLE, _C, "ckpt_fetch"): CHECKPOINT,
    (NEGOTIATE, _S, "need"): UPLOAD,
    (NEGOTIATE, _S, "refuse"): IDLE,
    (NEGOTIATE, _S, "error"): IDLE,
    (UPLOAD, _C, "blob"): UPLOAD,
    (UPLOAD, _C, "data"): UPLOAD,
    (UPLOAD, _C, "upload_done"): STARTING,
    (UPLOAD, _S, "error"): DRAIN,
    (DRAIN, _C, "blob"): DRAIN,
    (DRAIN, _C, "data"): DRAIN,
    (DRAIN, _C, "upload_done"): DRAIN,
    (STARTING, _S, "output"): STARTING,
    (STARTING, _S, "started"): STREAM,
    (STARTING, _S, "exit"): IDLE,
    (STARTING, _S, "error"): IDLE,
    (STARTING, _C, "signal"): STARTING,
    (STREAM, _S, "started"): STREAM,
    (STREAM, _S, "checkpoint"): STREAM,
    (STREAM, _S, "output"): STREAM,
    (STREAM, _S, "exit"): IDLE,
    (STREAM, _S, "error"): IDLE,
    (STREAM, _C, "signal"): STREAM,
    (RESULTS, _S, "results"): WANT,
    (RESULTS, _S, "error"): IDLE,
    (WANT, _C, "want"): DOWNLOAD,
    (DOWNLOAD, _S, "blob"): DOWNLOAD,
    (DOWNLOAD, _S, "data"): DOWNLOAD,
    (DOWNLOAD, _S, "results_done"): IDLE,
    (DOWNLOAD, _S, "ckpt_done"): IDLE,
    (CHECKPOINT, _S, "ckpt"): CKPT_WANT,
    (CHECKPOINT, _S, "error"): IDLE,
    (CKPT_WANT, _C, "ckpt_want"): DOWNLOAD,
    (DOWNLOAD, _S, "error"): IDLE,
    (REPLY, _S, "ok"): IDLE,
    (REPLY, _S, "error"): IDLE,
}
# Keepalives are legal in every open state and change nothing.
_ANYTIME = {"ping", "pong"}


def _kind(event: Event) -> str:
    if isinstance(event, Message):
        return event.t
    if isinstance(event, Data):
        return "data"
    return "output"


class Conversation:
    def __init__(self, role: str):
        if role not in (CLIENT, SERVER):
            raise ValueError(role)
        self.role = role
        self.state = START

    def _step(self, sender: str, event: Event) -> None:
        kind = _kind(event)
        if self.state == CLOSED:
            raise ProtocolError(f"{kind!r} after the conversation closed")
        if kind in _ANYTIME and self.state != START:
            return
        nxt = TRANSITIONS.get((self.state, sender, kind))
        if nxt is None:
            raise ProtocolError(f"unexpected {kind!r} from the {sender} in state {self.state}")
        self.state = nxt

    def send(self, event: Event) -> None:
        self._step(self.role, event)

    def abort(self) -> None:
        """A fatal error: the one last `error` frame goes out (Channel.send_error), then nothing."""
        self.state = CLOSED

    def receive(self, event: Event) -> None:
        self._step(SERVER if self.role == CLIENT else CLIENT, event)
