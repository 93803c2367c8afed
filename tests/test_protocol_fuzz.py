"""Property tests for the wire protocol: whatever bytes arrive, the decoder
either yields events or raises ProtocolError (never another exception) and
never holds more than one partial frame; the Conversation only ever raises
ProtocolError, whatever the order of events.

HOMIE_FUZZ_EXAMPLES sets the examples per target (default 2000) for a longer
run; if HOMIE_FUZZ_REPORT names a file, one JSON line
{"target": ..., "examples": n} per target is appended to it.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homie.errors import ProtocolError
from homie.wire import messages, protocol
from homie.wire.protocol import (
    CLIENT,
    HEADER,
    MAX_MSG,
    MAX_OUT,
    MSG,
    OUT_HEADER,
    SERVER,
    STDERR,
    STDOUT,
    Conversation,
    Data,
    FrameDecoder,
    Message,
    Output,
    decode_payload,
    encode,
)

from reliability import fuzz_budget  # noqa: E402

EXAMPLES = fuzz_budget(int(os.environ.get("HOMIE_FUZZ_EXAMPLES", "2000")))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)

# At most one partial frame is held: its payload so far (< its cap) or a partial
# header. The largest cap is OUT's (MAX_MSG + the 9-byte output header).
BOUND = max(protocol._CAPS.values()) + HEADER.size
assert BOUND >= MAX_MSG + HEADER.size

STATES = {protocol.CHECKPOINT, protocol.CKPT_WANT, protocol.DRAIN, protocol.START, protocol.IDLE, protocol.NEGOTIATE,
          protocol.UPLOAD,
          protocol.STARTING, protocol.STREAM, protocol.RESULTS, protocol.WANT, protocol.DOWNLOAD, protocol.REPLY,
          protocol.CLOSED}


class Cases:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


@pytest.fixture
def cases(request):
    """Counts the examples a fuzz target ran; reported at teardown."""
    c = Cases()
    yield c
    target = request.node.name
    print(f"\n{target}: {c.n} examples")
    path = os.environ.get("HOMIE_FUZZ_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"target": target, "examples": c.n}) + "\n")


# -- strategies ---------------------------------------------------------------

SHA = "ab" * 32
SAMPLES: dict[str, dict] = {
    "hello": {"name": "box", "proto": 1, "homie": "0.1", "python": "3.12"},
    "submit": {"job_id": "j1", "script": "run.py", "args": [], "files": [], "submitter": "me"},
    "need": {"hashes": [SHA]},
    "refuse": {"reason": "busy", "code": "busy"},
    "blob": {"sha256": SHA, "size": 3},
    "upload_done": {},
    "started": {"job_id": "j1", "pid": 42},
    "exit": {"job_id": "j1", "code": 0},
    "checkpoint": {"job_id": "j1", "seq": 1, "at": 0.5},
    "ckpt_fetch": {"job_id": "j1"},
    "ckpt": {"job_id": "j1", "seq": 1, "at": 0.5, "files": []},
    "ckpt_want": {"chunks": []},
    "ckpt_done": {},
    "attach": {"job_id": "j1", "offset": 0},
    "fetch": {"job_id": "j1"},
    "results": {"job_id": "j1", "files": []},
    "want": {"paths": ["out.txt"]},
    "results_done": {},
    "ack": {"job_id": "j1"},
    "signal": {"job_id": "j1", "sig": 15},
    "ok": {},
    "error": {"message": "nope"},
    "ping": {},
    "pong": {},
    "bye": {},
}
assert set(SAMPLES) == set(messages.PEER)

json_scalar = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=True) | st.text(max_size=12))
json_value = st.recursive(
    json_scalar,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
msg_type = st.sampled_from(sorted(messages.ALL)) | st.text(max_size=12)
all_fields = sorted({f for schema in messages.ALL.values() for f in schema})
field_name = st.sampled_from(all_fields) | st.text(max_size=8)


@st.composite
def json_like_message(draw):
    """A message-shaped dict: a known type most of the time, its fields with
    right, wrong or absent values, plus stray keys."""
    t = draw(msg_type)
    body = {}
    for f, (types, _req) in messages.ALL.get(t, {}).items():
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        if choice == 1:
            body[f] = draw(json_value)
        else:
            body[f] = draw(st.sampled_from([v for v in ("x", 1, 1.5, True, None, [], {}) if isinstance(v, types)]
                                           or ["x"]))
    body.update(draw(st.dictionaries(field_name, json_value, max_size=3)))
    return t, body


valid_event = st.one_of(
    st.sampled_from(sorted(SAMPLES)).map(lambda t: Message(t, SAMPLES[t])),
    st.binary(max_size=64).map(Data),
    st.builds(Output, st.sampled_from([STDOUT, STDERR]), st.integers(0, 2**64 - 1), st.binary(max_size=64)),
)
valid_stream = st.lists(valid_event, max_size=8).map(lambda evs: b"".join(encode(e) for e in evs))

# Interesting frame lengths: around every cap, zero, and the biggest a header can say.
lengths = st.sampled_from(sorted({0, 1, OUT_HEADER.size - 1, OUT_HEADER.size, MAX_MSG - 1, MAX_MSG,
                                  MAX_MSG + 1, MAX_OUT - 1, MAX_OUT, MAX_OUT + 1, 2**31, 2**32 - 1})) \
    | st.integers(0, 2**32 - 1)
mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("length"), st.integers(0, 10**6), lengths),
    st.tuples(st.just("ftype"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("frame"), st.integers(0, 10**6), st.integers(0, 255), st.binary(max_size=32)),
    st.tuples(st.just("json"), st.integers(0, 10**6), json_like_message()),
)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for m in mutations:
        pos = m[1] % (len(buf) + 1)
        kind = m[0]
        if kind == "flip" and buf:
            buf[pos % len(buf)] ^= m[2] or 1
        elif kind == "insert":
            buf[pos:pos] = m[2]
        elif kind == "delete":
            del buf[pos : pos + m[2]]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "length":
            buf[pos : pos + 4] = m[2].to_bytes(4, "big")
        elif kind == "ftype":
            buf[pos : pos + 1] = bytes([m[2]])
        elif kind == "frame":
            buf[pos:pos] = HEADER.pack(len(m[3]), m[2]) + m[3]
        elif kind == "json":
            t, body = m[2]
            payload = json.dumps({**body, "t": t}).encode()
            buf[pos:pos] = HEADER.pack(len(payload), MSG) + payload
    return bytes(buf)


def feed_sliced(data: bytes, cuts: list[int]) -> None:
    """Feed `data` cut at `cuts`; only ProtocolError may escape, and the decoder
    never holds more than one partial frame."""
    dec = FrameDecoder()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in zip(points, points[1:], strict=False):
            events = dec.feed(data[a:b])
            assert all(isinstance(e, (Message, Data, Output)) for e in events)
            assert dec.pending <= BOUND
    except ProtocolError:
        pass
    assert dec.pending <= max(BOUND, len(data))


cuts = st.lists(st.integers(0, 10**6), max_size=12)


# -- the decoder ----------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512), cuts=cuts)
def test_decoder_arbitrary_bytes(cases, data, cuts):
    cases()
    feed_sliced(data, cuts)


@FUZZ
@given(stream=valid_stream, mutations=st.lists(mutation, max_size=4), cuts=cuts)
def test_decoder_mutated_streams(cases, stream, mutations, cuts):
    cases()
    feed_sliced(mutate(stream, mutations), cuts)


@FUZZ
@given(stream=valid_stream, cuts=cuts)
def test_decoder_valid_streams_any_slicing(cases, stream, cuts):
    cases()
    whole = FrameDecoder().feed(stream)
    dec = FrameDecoder()
    got = []
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(points, points[1:], strict=False):
        got += dec.feed(stream[a:b])
    assert dec.pending == 0
    assert got == whole
    assert b"".join(encode(e) for e in got) == stream


@FUZZ
@given(ftype=st.integers(0, 255) | st.sampled_from([protocol.MSG, protocol.DATA, protocol.OUT]),
       payload=st.binary(max_size=256)
       | json_like_message().map(lambda tb: json.dumps({**tb[1], "t": tb[0]}).encode())
       | json_value.map(lambda v: json.dumps(v).encode()))
def test_decode_payload(cases, ftype, payload):
    cases()
    try:
        ev = decode_payload(ftype, payload)
    except ProtocolError:
        return
    assert isinstance(ev, (Message, Data, Output))
    if isinstance(ev, Message):
        messages.validate(ev.t, ev.body)  # whatever decodes is valid


# -- message validation ---------------------------------------------------------


@FUZZ
@given(tb=json_like_message())
def test_validate(cases, tb):
    cases()
    t, body = tb
    try:
        messages.validate(t, body)
    except ProtocolError:
        return
    # accepted: every required field present with the right type, and it survives the wire
    for f, (types, req) in messages.ALL[t].items():
        if f in body:
            assert isinstance(body[f], types) and (not isinstance(body[f], bool) or bool in types)
        else:
            assert not req
    body = {k: v for k, v in body.items() if k != "t"}
    try:
        wire = protocol.encode_msg(t, **body)
    except (ProtocolError, ValueError):  # too large; NaN is fine in Python's JSON
        return
    [ev] = FrameDecoder().feed(wire)
    assert ev.t == t and json.dumps(ev.body, sort_keys=True) == json.dumps(body, sort_keys=True)


# -- the Conversation state machine ---------------------------------------------

any_event = st.one_of(
    st.sampled_from(sorted(messages.ALL)).map(lambda t: Message(t, {})),
    st.text(max_size=8).map(lambda t: Message(t, {})),
    st.just(Data(b"")),
    st.just(Output(STDOUT, 0, b"")),
)


def _as_event(kind: str):
    if kind == "data":
        return Data(b"")
    if kind == "output":
        return Output(STDOUT, 0, b"")
    return Message(kind, {})


@FUZZ
@given(role=st.sampled_from([CLIENT, SERVER]), data=st.data())
def test_conversation_only_raises_protocol_error(cases, role, data):
    cases()
    conv = Conversation(role)
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        legal = [(s, k) for (st_, s, k) in protocol.TRANSITIONS if st_ == conv.state]
        if legal and data.draw(st.integers(0, 3), label="pick") > 0:
            sender, kind = data.draw(st.sampled_from(legal), label="legal")
            ev = _as_event(kind)
        else:
            sender = data.draw(st.sampled_from([CLIENT, SERVER]), label="sender")
            ev = data.draw(any_event, label="event")
        before = conv.state
        incoming = sender != role
        try:
            conv.receive(ev) if incoming else conv.send(ev)
        except ProtocolError:
            assert conv.state == before
            continue
        assert conv.state in STATES
        assert before != protocol.CLOSED
        kind = protocol._kind(ev)
        assert (before, sender, kind) in protocol.TRANSITIONS or (
            kind in ("ping", "pong") and before != protocol.START and conv.state == before)


@FUZZ
@given(t=json_value, body=json_value)
def test_validate_any_json(cases, t, body):
    """Whatever the input, validate raises ProtocolError or nothing."""
    cases()
    try:
        messages.validate(t, body)
    except ProtocolError:
        return
    assert isinstance(t, str) and isinstance(body, dict)


# -- the reader production uses: Channel.recv over a socket ---------------------------------


class _SlicedSocket:
    """A socket whose reads end at the given cuts (and at the end of the data)."""

    def __init__(self, data: bytes, cuts: list[int]):
        self.data = data
        self.pos = 0
        self.stops = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})

    def settimeout(self, t) -> None:
        self.timeout = t

    def gettimeout(self):
        return getattr(self, "timeout", None)

    def recv_into(self, view, nbytes: int = 0) -> int:
        if self.pos >= len(self.data):
            return 0  # the peer closed
        stop = next(s for s in self.stops if s > self.pos)
        n = min(nbytes or len(view), stop - self.pos)
        view[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def read_all(data: bytes, cuts: list[int]):
    """Every event Channel.recv reads from data: only ProtocolError or ConnectionClosed end it."""
    from homie.wire.channel import Channel, ConnectionClosed

    ch = Channel(_SlicedSocket(data, cuts))  # type: ignore[arg-type]
    out = []
    try:
        while True:
            ev = ch.recv()
            out.append(Data(bytes(ev.data)) if isinstance(ev, Data) else ev)
            assert len(ch._buf) <= MAX_MSG + OUT_HEADER.size + HEADER.size
    except (ProtocolError, ConnectionClosed):
        pass
    return out


@FUZZ
@given(data=st.binary(max_size=512), cuts=cuts)
def test_channel_reader_arbitrary_bytes(cases, data, cuts):
    cases()
    read_all(data, cuts)


@FUZZ
@given(stream=valid_stream, mutations=st.lists(mutation, max_size=4), cuts=cuts)
def test_channel_reader_mutated_streams(cases, stream, mutations, cuts):
    """Whatever arrives, the production reader yields what the reference decoder yields up to
    the first bad frame, and nothing but ProtocolError (or the end of the stream) stops it."""
    cases()
    data = mutate(stream, mutations)
    got = read_all(data, cuts)
    ref = []
    try:
        ref = FrameDecoder().feed(data)
    except ProtocolError:
        dec = FrameDecoder()
        for i in range(len(data)):
            try:
                ref += dec.feed(data[i:i + 1])
            except ProtocolError:
                break
    assert got == ref


@FUZZ
@given(stream=valid_stream, cuts=cuts)
def test_channel_reader_valid_streams_any_slicing(cases, stream, cuts):
    cases()
    assert read_all(stream, cuts) == FrameDecoder().feed(stream)
