"""The job channel's wire protocol: frame codec, message validation and the
Conversation state machine (homie.wire.protocol, homie.wire.messages)."""

from __future__ import annotations

import json
import random

import pytest

from homie.errors import ProtocolError
from homie.wire import messages, protocol
from homie.wire.protocol import (
    CLIENT,
    CLOSED,
    DATA,
    HEADER,
    IDLE,
    MAX_DATA,
    MAX_MSG,
    MAX_OUT,
    MSG,
    OUT,
    OUT_HEADER,
    SERVER,
    START,
    STDERR,
    STDOUT,
    Conversation,
    Data,
    FrameDecoder,
    Message,
    Output,
    decode_payload,
    encode,
    encode_msg,
    encode_output,
    parse_header,
)

SHA = "ab" * 32

# One valid example of every job-channel message.
SAMPLES: dict[str, dict] = {
    "hello": {"name": "box", "proto": 1, "homie": "0.1", "python": "3.12", "instance": "i-1"},
    "submit": {"job_id": "j1", "script": "run.py", "args": ["-v", "x"], "files": [{"path": "a"}],
               "submitter": "me", "gpu": True, "interpreter": None, "env": {"A": "1"}},
    "need": {"hashes": [SHA]},
    "refuse": {"reason": "busy", "code": "busy"},
    "blob": {"sha256": SHA, "size": 3},
    "upload_done": {},
    "started": {"job_id": "j1", "pid": 42, "gpu": None},
    "exit": {"job_id": "j1", "code": 0, "signal": None, "cpu_s": 1.5, "wall_s": 2, "results": 1,
             "evicted": False, "checkpoint": 2},
    "checkpoint": {"job_id": "j1", "seq": 2, "at": 1.5, "bytes": 10},
    "ckpt_fetch": {"job_id": "j1", "token": "t"},
    "ckpt": {"job_id": "j1", "seq": 2, "at": 1.5, "files": []},
    "ckpt_want": {"chunks": [SHA]},
    "ckpt_done": {},
    "attach": {"job_id": "j1", "offset": 0},
    "fetch": {"job_id": "j1"},
    "results": {"job_id": "j1", "files": [{"path": "out.txt"}]},
    "want": {"paths": ["out.txt"]},
    "results_done": {},
    "ack": {"job_id": "j1"},
    "signal": {"job_id": "j1", "sig": 15},
    "ok": {},
    "error": {"message": "nope", "code": "x"},
    "ping": {},
    "pong": {},
    "bye": {},
}


def msg(t: str, **over) -> Message:
    body = dict(SAMPLES[t])
    body.update(over)
    return Message(t, body)


def decode_all(stream: bytes) -> list:
    dec = FrameDecoder()
    events = dec.feed(stream)
    assert dec.pending == 0
    return events


def frame(ftype: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), ftype) + payload


def norm(ev):
    """Comparable form of an event (Data may hold a memoryview)."""
    if isinstance(ev, Data):
        return Data(bytes(ev.data))
    return ev


# -- round trips ------------------------------------------------------------


def test_samples_cover_every_peer_message():
    assert set(SAMPLES) == set(messages.PEER)


@pytest.mark.parametrize("t", sorted(SAMPLES))
def test_message_round_trip(t):
    m = msg(t)
    wire = encode(m)
    assert wire == encode_msg(t, **SAMPLES[t])
    length, ftype = parse_header(wire[: HEADER.size])
    assert ftype == MSG and length == len(wire) - HEADER.size
    assert decode_all(wire) == [m]


def test_message_unicode_and_unknown_fields_round_trip():
    m = Message("error", {"message": "héllo \u2603 \U0001f600", "future_field": [1, {"x": None}]})
    assert decode_all(encode(m)) == [m]


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)), b"\0" * MAX_DATA])
def test_data_round_trip(data):
    wire = protocol.data_header(len(data)) + data
    assert wire == encode(Data(data))
    assert parse_header(wire[: HEADER.size]) == (len(data), DATA)
    [ev] = decode_all(wire)
    assert isinstance(ev, Data) and bytes(ev.data) == data


def test_data_view_round_trip():
    assert norm(decode_all(encode(Data(memoryview(b"abc"))))[0]) == Data(b"abc")


@pytest.mark.parametrize("stream", [STDOUT, STDERR])
@pytest.mark.parametrize("data", [b"", b"hello\n", b"\xff" * (MAX_OUT - OUT_HEADER.size)])
@pytest.mark.parametrize("end", [0, 17, 2**64 - 1])
def test_output_round_trip(stream, data, end):
    wire = encode_output(stream, end, data)
    assert wire == encode(Output(stream, end, data))
    assert parse_header(wire[: HEADER.size]) == (OUT_HEADER.size + len(data), OUT)
    assert decode_all(wire) == [Output(stream, end, data)]


def test_encoders_refuse_oversized_frames():
    with pytest.raises(ProtocolError):
        protocol.data_header(MAX_DATA + 1)
    with pytest.raises(ProtocolError):
        encode_output(STDOUT, 0, b"x" * (MAX_OUT - OUT_HEADER.size + 1))
    with pytest.raises(ProtocolError):
        encode_msg("error", message="x" * MAX_MSG)


def _mixed_stream() -> tuple[bytes, list]:
    rng = random.Random(1)
    events = []
    for i in range(60):
        k = i % 3
        if k == 0:
            t = sorted(SAMPLES)[i % len(SAMPLES)]
            events.append(msg(t))
        elif k == 1:
            events.append(Data(rng.randbytes(rng.choice([0, 1, 7, 300, 5000]))))
        else:
            events.append(Output(rng.choice([STDOUT, STDERR]), i * 1000, rng.randbytes(rng.choice([0, 3, 999]))))
    return b"".join(encode(e) for e in events), events


def test_decoder_whole_stream():
    wire, events = _mixed_stream()
    assert [norm(e) for e in decode_all(wire)] == events


def test_decoder_byte_by_byte():
    wire, events = _mixed_stream()
    dec = FrameDecoder()
    got = []
    for i in range(len(wire)):
        got += dec.feed(wire[i : i + 1])
        assert dec.pending < MAX_OUT
    assert dec.pending == 0
    assert [norm(e) for e in got] == events


@pytest.mark.parametrize("seed", range(25))
def test_decoder_random_slicings(seed):
    wire, events = _mixed_stream()
    rng = random.Random(seed)
    dec = FrameDecoder()
    got = []
    pos = 0
    while pos < len(wire):
        n = rng.choice([0, 1, 2, 4, 5, 6, 9, 64, 1000, 10_000])
        got += dec.feed(wire[pos : pos + n])
        pos += n
    assert dec.pending == 0
    assert [norm(e) for e in got] == events


def test_decoder_partial_frame_yields_nothing_until_complete():
    wire = encode(msg("hello"))
    dec = FrameDecoder()
    assert dec.feed(wire[:-1]) == []
    assert dec.feed(wire[-1:]) == [msg("hello")]


# -- caps are checked before the payload is read ------------------------------


@pytest.mark.parametrize("ftype", [MSG, DATA, OUT])
def test_huge_header_rejected_from_header_alone(ftype):
    hdr = HEADER.pack(0xFFFFFFFF, ftype)  # ~4 GiB announced
    assert len(hdr) == 5
    with pytest.raises(ProtocolError):
        parse_header(hdr)
    dec = FrameDecoder()
    with pytest.raises(ProtocolError):
        dec.feed(hdr)
    assert dec.pending <= HEADER.size


@pytest.mark.parametrize("ftype,cap", [(MSG, MAX_MSG), (DATA, MAX_DATA), (OUT, MAX_OUT)])
def test_cap_boundaries(ftype, cap):
    assert parse_header(HEADER.pack(cap, ftype)) == (cap, ftype)
    with pytest.raises(ProtocolError):
        parse_header(HEADER.pack(cap + 1, ftype))
    dec = FrameDecoder()
    with pytest.raises(ProtocolError):
        dec.feed(HEADER.pack(cap + 1, ftype))


def test_huge_header_after_valid_frames_in_one_feed():
    dec = FrameDecoder()
    with pytest.raises(ProtocolError):
        dec.feed(encode(msg("ping")) + HEADER.pack(0xFFFFFFFF, DATA))
    assert dec.pending <= HEADER.size


def test_truncated_header():
    for n in range(HEADER.size):
        with pytest.raises(ProtocolError):
            parse_header(b"\0" * n)
    with pytest.raises(ProtocolError):
        parse_header(b"\0" * (HEADER.size + 1))


# -- malformed frames and messages -------------------------------------------


@pytest.mark.parametrize("ftype", [0, 4, 5, 0x7F, 0xFF])
def test_unknown_frame_type(ftype):
    with pytest.raises(ProtocolError):
        parse_header(HEADER.pack(0, ftype))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(HEADER.pack(0, ftype))
    with pytest.raises(ProtocolError):
        decode_payload(ftype, b"")


@pytest.mark.parametrize("payload", [
    b"", b"{", b"{'t': 'ping'}", b'{"t": "ping"', b"\xff\xfe\x00",
    b'{"t": "ping"} x', b"[" * 100_000 + b"]" * 100_000, b"1" * 10_000,
])
def test_bad_json(payload):
    with pytest.raises(ProtocolError):
        decode_payload(MSG, payload)
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(frame(MSG, payload))


@pytest.mark.parametrize("payload", [b"[]", b'["t", "ping"]', b'"ping"', b"1", b"null", b"true", b"1.5"])
def test_non_object_json(payload):
    with pytest.raises(ProtocolError, match="not an object"):
        decode_payload(MSG, payload)


@pytest.mark.parametrize("obj", [{}, {"x": 1}, {"t": None}, {"t": 1}, {"t": ["ping"]}, {"t": {"a": 1}}])
def test_missing_or_bad_type_field(obj):
    with pytest.raises(ProtocolError):
        decode_payload(MSG, json.dumps(obj).encode())


@pytest.mark.parametrize("t", ["", "nope", "PING", "ping ", "t", "__class__", "x" * 1000])
def test_unknown_message_type(t):
    with pytest.raises(ProtocolError, match="unknown message type"):
        decode_payload(MSG, json.dumps({"t": t}).encode())
    with pytest.raises(ProtocolError):
        messages.validate(t, {})


def _required(t):
    return [f for f, (_, req) in messages.ALL[t].items() if req]


@pytest.mark.parametrize("t,field", [(t, f) for t in sorted(SAMPLES) for f in _required(t)])
def test_missing_required_field(t, field):
    body = dict(SAMPLES[t])
    del body[field]
    with pytest.raises(ProtocolError, match="missing field"):
        decode_payload(MSG, encode(Message(t, body))[HEADER.size :])


def test_optional_fields_may_be_absent():
    for t in SAMPLES:
        body = {f: SAMPLES[t][f] for f in _required(t)}
        assert decode_payload(MSG, encode(Message(t, body))[HEADER.size :]) == Message(t, body)


@pytest.mark.parametrize("t,field,value", [
    ("hello", "proto", True),       # bool where int expected
    ("hello", "proto", False),
    ("blob", "size", True),
    ("attach", "offset", False),
    ("signal", "sig", True),
    ("started", "pid", True),       # OPT_I
    ("exit", "code", True),
    ("exit", "cpu_s", True),        # number
    ("hello", "proto", "1"),
    ("hello", "proto", 1.0),
    ("hello", "name", 1),
    ("hello", "name", None),
    ("submit", "args", "x"),
    ("submit", "args", {"a": 1}),
    ("submit", "env", []),
    ("submit", "gpu", 1),           # int where bool expected
    ("submit", "interpreter", 3),
    ("need", "hashes", None),
    ("exit", "code", 1.5),
    ("error", "message", []),
])
def test_mistyped_field(t, field, value):
    body = dict(SAMPLES[t])
    body[field] = value
    with pytest.raises(ProtocolError, match="must be"):
        messages.validate(t, body)
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(encode_msg(t, **body))


@pytest.mark.parametrize("field,value,why", [
    ("env", {"1BAD": "x"}, "bad environment variable name"),
    ("env", {"": "x"}, "bad environment variable name"),
    ("env", {"A-B": "x"}, "bad environment variable name"),
    ("env", {"A": 1}, "must be a string"),
    ("env", {"A": "x\0y"}, "must be a string without NUL"),
    ("env", {f"V{i}": "x" for i in range(257)}, "more than 256"),
    ("timeout", 0, "positive number"),
    ("timeout", -5.0, "positive number"),
    ("timeout", "10", "must be"),
    ("stdin", ".homie-stdin", "must name a file of the job"),  # not in the manifest
    ("stdin", "", "must name a file of the job"),
    ("stdin", 3, "must be"),
])
def test_submit_job_settings_are_checked(field, value, why):
    """The optional fields of `submit` (homie run -e/--env-file, --timeout, piped stdin)."""
    body = dict(SAMPLES["submit"])
    body[field] = value
    with pytest.raises(ProtocolError, match=why):
        messages.validate("submit", body)


def test_submit_job_settings_accepted():
    body = dict(SAMPLES["submit"], env={"FOO": "bar", "_X1": ""}, timeout=1.5, stdin="a")
    messages.validate("submit", body)
    messages.validate("submit", dict(body, timeout=None, stdin=None))


def test_truncated_and_bad_output_frames():
    for n in range(OUT_HEADER.size):
        with pytest.raises(ProtocolError):
            decode_payload(OUT, b"\x01" * n)
    for stream in (0, 3, 255):
        with pytest.raises(ProtocolError):
            decode_payload(OUT, OUT_HEADER.pack(stream, 0) + b"x")


# -- the Conversation state machine ------------------------------------------

# (sender, event) in order: every request kind the job channel knows.
FULL = [
    (SERVER, msg("hello")),
    (CLIENT, msg("submit")),
    (SERVER, msg("need")),
    (CLIENT, msg("blob")),
    (CLIENT, Data(b"abc")),
    (CLIENT, msg("upload_done")),
    (SERVER, Output(STDOUT, 10, b"setting up venv\n")),
    (SERVER, msg("started")),
    (SERVER, Output(STDERR, 20, b"hi\n")),
    (SERVER, msg("checkpoint")),
    (SERVER, msg("exit")),
    (CLIENT, msg("ckpt_fetch")),
    (SERVER, msg("ckpt")),
    (CLIENT, msg("ckpt_want")),
    (SERVER, msg("blob")),
    (SERVER, Data(b"chunk")),
    (SERVER, msg("ckpt_done")),
    (CLIENT, msg("fetch")),
    (SERVER, msg("results")),
    (CLIENT, msg("want")),
    (SERVER, msg("blob")),
    (SERVER, Data(b"out")),
    (SERVER, msg("results_done")),
    (CLIENT, msg("ack")),
    (SERVER, msg("ok")),
    (CLIENT, msg("bye")),
]


def play(conv: Conversation, script) -> None:
    for sender, ev in script:
        if sender == conv.role:
            conv.send(ev)
        else:
            conv.receive(ev)


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_full_conversation(role):
    conv = Conversation(role)
    assert conv.state == START
    play(conv, FULL)
    assert conv.state == CLOSED


def test_full_conversation_through_the_wire():
    """Both ends decode the same bytes and agree on the state at every step."""
    client, server = Conversation(CLIENT), Conversation(SERVER)
    dec = FrameDecoder()
    for sender, ev in FULL:
        [got] = dec.feed(encode(ev))
        (client if sender == SERVER else server).receive(got)
        (server if sender == SERVER else client).send(ev)
        assert client.state == server.state


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_other_legal_paths(role):
    paths = [
        [(SERVER, msg("error"))],  # server refuses the connection outright
        [(SERVER, msg("hello")), (CLIENT, msg("submit")), (SERVER, msg("refuse")), (CLIENT, msg("bye"))],
        [(SERVER, msg("hello")), (CLIENT, msg("submit")), (SERVER, msg("error")),
         (CLIENT, msg("attach")), (SERVER, Output(STDOUT, 1, b"x")), (CLIENT, msg("signal")),
         (SERVER, msg("error")),
         (CLIENT, msg("signal")), (SERVER, msg("ok")),
         (CLIENT, msg("fetch")), (SERVER, msg("error")),
         (CLIENT, msg("bye"))],
        [(SERVER, msg("hello")), (CLIENT, msg("submit")), (SERVER, msg("need")), (CLIENT, msg("upload_done")),
         (CLIENT, msg("signal")), (SERVER, msg("exit")), (CLIENT, msg("bye"))],
    ]
    for script in paths:
        conv = Conversation(role)
        play(conv, script)
        assert conv.state == CLOSED


HELLO = [(SERVER, msg("hello"))]


@pytest.mark.parametrize("role", [CLIENT, SERVER])
@pytest.mark.parametrize("script", [
    pytest.param([(CLIENT, msg("submit"))], id="message-before-hello"),
    pytest.param([(CLIENT, msg("hello"))], id="client-sends-hello"),
    pytest.param([(SERVER, msg("ping"))], id="ping-before-hello"),
    pytest.param([(CLIENT, msg("pong"))], id="pong-before-hello"),
    pytest.param([(SERVER, Data(b""))], id="data-before-hello"),
    pytest.param(HELLO + [(CLIENT, Data(b"x"))], id="data-before-submit"),
    pytest.param(HELLO + [(SERVER, Data(b"x"))], id="server-data-in-idle"),
    pytest.param(HELLO + [(SERVER, msg("exit"))], id="exit-in-idle"),
    pytest.param(HELLO + [(SERVER, Output(STDOUT, 1, b""))], id="output-in-idle"),
    pytest.param(HELLO + [(SERVER, msg("hello"))], id="second-hello"),
    pytest.param(HELLO + [(CLIENT, msg("need"))], id="client-sends-server-message"),
    pytest.param(HELLO + [(SERVER, msg("submit"))], id="server-sends-client-message"),
    pytest.param(HELLO + [(CLIENT, msg("submit")), (CLIENT, msg("blob"))], id="blob-before-need"),
    pytest.param(HELLO + [(CLIENT, msg("submit")), (SERVER, msg("need")), (SERVER, msg("started"))],
                 id="started-during-upload"),
    pytest.param(HELLO + [(CLIENT, msg("submit")), (SERVER, msg("need")), (CLIENT, msg("bye"))],
                 id="bye-during-upload"),
    pytest.param(HELLO + [(CLIENT, msg("fetch")), (CLIENT, msg("want"))], id="want-before-results"),
    pytest.param(HELLO + [(CLIENT, msg("fetch")), (SERVER, msg("results")), (SERVER, msg("blob"))],
                 id="blob-before-want"),
    pytest.param(HELLO + [(CLIENT, msg("ack")), (CLIENT, msg("ack"))], id="second-request-before-reply"),
    pytest.param(HELLO + [(SERVER, msg("ok"))], id="unsolicited-ok"),
    pytest.param(HELLO + [(CLIENT, msg("bye")), (SERVER, msg("ping"))], id="ping-after-bye"),
    pytest.param(HELLO + [(CLIENT, msg("bye")), (CLIENT, msg("bye"))], id="bye-after-bye"),
    pytest.param(HELLO + [(CLIENT, msg("bye")), (SERVER, msg("error"))], id="error-after-bye"),
    pytest.param([(SERVER, msg("error")), (SERVER, msg("hello"))], id="hello-after-error-close"),
    pytest.param(HELLO + [(CLIENT, Message("status", {}))], id="control-message-on-job-channel"),
])
def test_illegal_orders(role, script):
    conv = Conversation(role)
    play(conv, script[:-1])
    sender, ev = script[-1]
    before = conv.state
    with pytest.raises(ProtocolError):
        if sender == role:
            conv.send(ev)
        else:
            conv.receive(ev)
    assert conv.state == before


def test_unknown_role():
    with pytest.raises(ValueError):
        Conversation("both")


def _prefixes_reaching_each_open_state():
    """For every state after hello, a script that ends there."""
    out = {}
    for i in range(1, len(FULL)):
        conv = Conversation(CLIENT)
        play(conv, FULL[:i])
        if conv.state != CLOSED:
            out.setdefault(conv.state, FULL[:i])
    return out


def test_prefixes_reach_every_open_state():
    states = set(_prefixes_reaching_each_open_state()) | {protocol.REPLY, protocol.DRAIN}
    assert states == {IDLE, protocol.NEGOTIATE, protocol.UPLOAD, protocol.STARTING, protocol.STREAM,
                      protocol.RESULTS, protocol.WANT, protocol.DOWNLOAD, protocol.REPLY,
                      protocol.CHECKPOINT, protocol.CKPT_WANT, protocol.DRAIN}


@pytest.mark.parametrize("role", [CLIENT, SERVER])
@pytest.mark.parametrize("kind", ["ping", "pong"])
def test_keepalives_anywhere_after_hello(role, kind):
    for state, prefix in _prefixes_reaching_each_open_state().items():
        for sender in (CLIENT, SERVER):
            conv = Conversation(role)
            play(conv, prefix)
            play(conv, [(sender, msg(kind))])
            assert conv.state == state
            # and the conversation carries on as if nothing happened
            play(conv, FULL[len(prefix):])
            assert conv.state == CLOSED


@pytest.mark.parametrize("t,body", [(None, {}), (1, {}), (["ping"], {}), ({"t": 1}, {}),
                                    ("ping", None), ("hello", []), ("hello", "name"), ("ping", 3)])
def test_validate_rejects_non_string_type_or_non_object_body(t, body):
    with pytest.raises(ProtocolError):
        messages.validate(t, body)


def test_decoder_holds_at_most_one_partial_frame():
    """The biggest partial frame is an OUT frame one byte short: MAX_OUT - 1
    payload bytes (a little over MAX_MSG, since OUT's cap includes its own header)."""
    wire = encode_output(STDOUT, 5, b"z" * (MAX_OUT - OUT_HEADER.size))
    dec = FrameDecoder()
    assert dec.feed(wire[:-1]) == []
    assert dec.pending == MAX_OUT - 1 <= max(protocol._CAPS.values()) + HEADER.size
    [ev] = dec.feed(wire[-1:] + wire[:3])
    assert ev == Output(STDOUT, 5, b"z" * (MAX_OUT - OUT_HEADER.size))
    assert dec.pending == 3


def test_a_refused_upload_drains_what_was_in_flight_then_nothing_else():
    """The worker refuses mid-upload (disk full): the submitter's frames already on
    the wire are read and dropped, legally; nothing else is, and the worker says no more."""
    conv = Conversation(SERVER)
    play(conv, FULL[:4])  # hello, submit, need, blob
    conv.send(msg("error"))
    assert conv.state == protocol.DRAIN
    for ev in (Data(b"late"), msg("blob"), Data(b"x"), msg("upload_done")):
        conv.receive(ev)
    with pytest.raises(ProtocolError):
        conv.receive(msg("attach"))
    with pytest.raises(ProtocolError):
        Conversation(SERVER).send(msg("need"))  # and a server never speaks out of turn


def test_abort_closes_the_conversation():
    conv = Conversation(CLIENT)
    play(conv, FULL[:1])
    conv.abort()
    with pytest.raises(ProtocolError):
        conv.send(msg("bye"))
