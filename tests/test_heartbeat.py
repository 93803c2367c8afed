import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homie.discovery.heartbeat import HEADER, MAC_BYTES, MAGIC, MAX_PACKET, VERSION, Heartbeat, Signer, Verifier
from homie.keys import derive, generate_key, group_tag

from reliability import fuzz_budget

KEY = generate_key()
NOW = 1_700_000_000.0
BODY = {"name": "alice", "port": 7411, "gpus": [{"name": "RTX 4090", "mem_mb": 24564}]}


class Clock:
    def __init__(self, t=NOW):
        self.t = t

    def __call__(self):
        return self.t


def make_verifier(**kw):
    return Verifier(KEY, clock=Clock(), **kw)


def forge(key, payload: bytes, instance=b"i" * 16, seq=1, ts_ms=int(NOW * 1000)) -> bytes:
    """A correctly signed packet with an arbitrary payload."""
    signed = HEADER.pack(MAGIC, VERSION, group_tag(key), instance, seq, ts_ms) + payload
    return signed + hmac.digest(derive(key, "heartbeat-hmac"), signed, "sha256")


def test_round_trip():
    s, v = Signer(KEY), make_verifier()
    data = s.encode(BODY, now=NOW)
    assert len(data) < 300
    hb = v.verify(data, source=("10.0.0.2", 7411))
    assert hb == Heartbeat(s.instance, 1, int(NOW * 1000), BODY)
    assert not v.dropped


def test_seq_is_strictly_increasing_and_starts_at_1():
    s, v = Signer(KEY), make_verifier()
    seqs = [v.verify(s.encode({"n": i}, now=NOW)).seq for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]


def test_signer_instance():
    assert len(Signer(KEY).instance) == 16
    assert Signer(KEY).instance != Signer(KEY).instance
    assert Signer(KEY, b"x" * 16).instance == b"x" * 16
    with pytest.raises(ValueError):
        Signer(KEY, b"short")


def test_tampered_byte_anywhere_is_dropped():
    data = Signer(KEY).encode(BODY, now=NOW)
    for i in range(len(data)):
        v = make_verifier()
        bad = bytearray(data)
        bad[i] ^= 0x01
        assert v.verify(bytes(bad)) is None
        reason = "tag" if i < 13 else "mac"
        assert v.dropped == {reason: 1}, i


def test_other_group_is_dropped_by_tag():
    v = make_verifier()
    assert v.verify(Signer(generate_key()).encode(BODY, now=NOW)) is None
    assert v.dropped == {"tag": 1}


def test_replay_and_older_seq():
    s, v = Signer(KEY), make_verifier()
    first, second = s.encode(BODY, now=NOW), s.encode(BODY, now=NOW)
    assert v.verify(first) is not None
    assert v.verify(first) is None
    assert v.dropped == {"replay": 1}
    assert v.verify(second).seq == 2
    assert v.verify(first) is None
    assert v.verify(second) is None
    assert v.dropped == {"replay": 3}


def test_instances_are_tracked_separately():
    v = make_verifier()
    a, b = Signer(KEY), Signer(KEY)  # e.g. a cloned VM with the same name
    assert v.verify(a.encode(BODY, now=NOW)) is not None
    assert v.verify(b.encode(BODY, now=NOW)) is not None  # seq 1 again, other instance


@pytest.mark.parametrize("offset", [-31.0, 31.0, -300.0, 3600.0])
def test_skew_is_dropped_and_recorded(offset):
    s, v = Signer(KEY), make_verifier()
    assert v.verify(s.encode(BODY, now=NOW + offset), source=("10.0.0.9", 7411)) is None
    assert v.dropped == {"skew": 1}
    rec = v.skewed[("10.0.0.9", 7411)]
    assert rec["name"] == "alice" and rec["at"] == NOW
    assert rec["skew_s"] == pytest.approx(offset, abs=0.002)
    # Without a source the instance id identifies the sender.
    v.verify(s.encode({"name": "x"}, now=NOW + offset))
    assert v.skewed[s.instance.hex()]["name"] == "x"


def test_skewed_packet_does_not_advance_seq():
    s, v = Signer(KEY), make_verifier()
    v.verify(s.encode(BODY, now=NOW + 100))
    assert v.verify(s.encode(BODY, now=NOW)) is not None


def test_within_window_is_accepted():
    s, v = Signer(KEY), make_verifier()
    assert v.verify(s.encode(BODY, now=NOW - 29.9)) is not None
    assert v.verify(s.encode(BODY, now=NOW + 29.9)) is not None


def test_skewed_table_is_bounded():
    v = make_verifier()
    for i in range(300):
        v.verify(Signer(KEY).encode({"name": str(i)}, now=NOW - 100), source=("10.0.0.1", i))
    assert len(v.skewed) == 256
    assert ("10.0.0.1", 299) in v.skewed and ("10.0.0.1", 0) not in v.skewed


def test_oversize_and_undersize():
    v = make_verifier()
    good = Signer(KEY).encode(BODY, now=NOW)
    assert v.verify(good + b"x" * MAX_PACKET) is None
    assert v.verify(b"") is None
    assert v.verify(good[:HEADER.size + MAC_BYTES]) is None
    assert v.dropped == {"size": 3}


def test_encode_refuses_oversize_and_keeps_seq():
    s = Signer(KEY)
    with pytest.raises(ValueError, match="1200"):
        s.encode({"pad": "x" * MAX_PACKET}, now=NOW)
    assert make_verifier().verify(s.encode(BODY, now=NOW)).seq == 1
    # The largest body that fits is accepted.
    room = MAX_PACKET - HEADER.size - MAC_BYTES - len('{"pad":""}')
    data = s.encode({"pad": "x" * room}, now=NOW)
    assert len(data) == MAX_PACKET
    assert make_verifier().verify(data) is not None


def test_encode_rejects_non_dict_and_nan():
    s = Signer(KEY)
    with pytest.raises(TypeError):
        s.encode([1, 2])
    with pytest.raises(ValueError):
        s.encode({"x": float("nan")})


@pytest.mark.parametrize(
    "payload", [b"[1,2]", b'"s"', b"null", b"{x", b"\xff\xfe{}", b"{}garbage", b"[" * 560 + b"]" * 560]
)
def test_signed_garbage_json_is_dropped(payload):
    v = make_verifier()
    assert v.verify(forge(KEY, payload)) is None
    assert v.dropped == {"json": 1}


def test_eviction_in_bounded_table():
    v = make_verifier(max_instances=3)
    signers = [Signer(KEY) for _ in range(4)]
    old = [s.encode(BODY, now=NOW) for s in signers]
    for s in signers[:3]:
        v.verify(s.encode(BODY, now=NOW))
    # Touch signer 0 so signer 1 is the least recently used.
    v.verify(signers[0].encode(BODY, now=NOW))
    v.verify(signers[3].encode(BODY, now=NOW))
    assert len(v._last_seq) == 3
    assert signers[1].instance not in v._last_seq
    assert v.verify(old[0]) is None and v.verify(old[2]) is None  # still remembered
    assert v.dropped["replay"] == 2


def test_only_authenticated_packets_touch_the_table():
    v = make_verifier()
    v.verify(Signer(generate_key()).encode(BODY, now=NOW))
    bad = bytearray(Signer(KEY).encode(BODY, now=NOW))
    bad[-1] ^= 1
    v.verify(bytes(bad))
    assert not v._last_seq


def test_accepts_bytes_like_input():
    s, v = Signer(KEY), make_verifier()
    assert v.verify(bytearray(s.encode(BODY, now=NOW))) is not None
    assert v.verify(memoryview(s.encode(BODY, now=NOW))) is not None
    assert v.verify(None) is None


def test_default_clock_accepts_fresh_packets():
    assert Verifier(KEY).verify(Signer(KEY).encode({"name": "a"})) is not None


# --- fuzzing: the verifier faces whatever arrives on a UDP port -------------

_VALID = [Signer(KEY).encode(BODY, now=NOW), forge(KEY, b"[" * 560 + b"]" * 560), forge(KEY, b'{"a":1}', ts_ms=0)]
_FUZZ_VERIFIER = make_verifier(max_instances=8)


@settings(max_examples=fuzz_budget(2000), deadline=None)
@given(st.binary(max_size=1500))
def test_fuzz_random_bytes_never_raise(data):
    assert _FUZZ_VERIFIER.verify(data) is None


@settings(max_examples=fuzz_budget(2000), deadline=None)
@given(
    st.sampled_from(_VALID),
    st.lists(st.tuples(st.integers(0, 1300), st.integers(0, 255)), max_size=8),
    st.integers(0, 1300),
    st.binary(max_size=64),
)
def test_fuzz_mutated_packets_never_raise(packet, flips, cut, extra):
    data = bytearray(packet)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[: max(cut, 0)]) + extra if cut < len(data) else bytes(data) + extra
    result = _FUZZ_VERIFIER.verify(data, source="fuzz")
    assert result is None or isinstance(result.body, dict)


@settings(max_examples=fuzz_budget(500), deadline=None)
@given(st.binary(max_size=MAX_PACKET - HEADER.size - MAC_BYTES), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_fuzz_authenticated_payloads_never_raise(payload, seq, ts_ms):
    # Only a member can sign, but a buggy member must not crash everyone else.
    v = make_verifier()
    hb = v.verify(forge(KEY, payload, seq=seq, ts_ms=ts_ms))
    assert hb is None or (isinstance(hb.body, dict) and hb.body == json.loads(payload))
