"""Signed heartbeats: a sans-IO codec and verifier (design notes, section 2).

Packet layout:
    header  !4sB8s16sQQ  magic b"HOMI", version, group tag, per-boot instance id,
                         sequence number, timestamp (ms since the epoch)
    body    compact JSON object
    mac     HMAC-SHA256(derive(key, "heartbeat-hmac"), header + body)

The MAC covers the exact bytes sent, so no JSON canonicalisation is needed. The
group tag is public: it only lets a node drop another group's packets before
spending an HMAC on them. Take the peer's address from the datagram source, never
from the body.
"""

from __future__ import annotations

import hmac
import json
import os
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from homie.keys import derive, group_tag

MAGIC = b"HOMI"
VERSION = 1
HEADER = struct.Struct("!4sB8s16sQQ")
MAC_BYTES = 32
INSTANCE_BYTES = 16
# Fits one unfragmented UDP datagram on any sane LAN MTU.
MAX_PACKET = 1200
_MIN_PACKET = HEADER.size + len(b"{}") + MAC_BYTES
_MAX_SKEWED = 256


@dataclass(frozen=True)
class Heartbeat:
    instance: bytes
    seq: int
    ts_ms: int
    body: dict[str, Any]


class Signer:
    """Encodes this process's heartbeats; one per boot, so seq never repeats."""

    def __init__(self, key: bytes, instance: bytes | None = None):
        if instance is None:
            instance = os.urandom(INSTANCE_BYTES)
        if len(instance) != INSTANCE_BYTES:
            raise ValueError(f"instance id must be {INSTANCE_BYTES} bytes")
        self.instance = bytes(instance)
        self._tag = group_tag(key)
        self._mac_key = derive(key, "heartbeat-hmac")
        self._seq = 0

    def encode(self, body: dict[str, Any], now: float | None = None) -> bytes:
        if not isinstance(body, dict):
            raise TypeError("a heartbeat body is a dict")
        if now is None:
            now = time.time()
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        size = HEADER.size + len(payload) + MAC_BYTES
        if size > MAX_PACKET:
            raise ValueError(f"heartbeat is {size} bytes, over the {MAX_PACKET}-byte limit")
        # Only bump seq for a packet that will exist, so seqs stay contiguous.
        self._seq += 1
        signed = HEADER.pack(MAGIC, VERSION, self._tag, self.instance, self._seq, int(now * 1000)) + payload
        return signed + hmac.digest(self._mac_key, signed, "sha256")


class Verifier:
    """Checks heartbeats from the group; drops everything else silently, counted.

    Never raises on packet contents: the input is whatever arrives on a UDP port.
    """

    def __init__(
        self,
        key: bytes,
        window_s: float = 30.0,
        max_instances: int = 4096,
        clock: Callable[[], float] = time.time,
    ):
        self._prefix = MAGIC + bytes([VERSION]) + group_tag(key)
        self._mac_key = derive(key, "heartbeat-hmac")
        self.window_s = window_s
        self.max_instances = max_instances
        self.clock = clock
        # instance -> highest accepted seq. Bounded LRU so a flood of made-up
        # instances cannot grow memory; only authenticated packets reach it, so
        # only a group member could cause evictions.
        self._last_seq: OrderedDict[bytes, int] = OrderedDict()
        self.dropped: Counter[str] = Counter()
        # Who sent a valid packet with a bad clock, so `homie doctor` can say so.
        self.skewed: OrderedDict[Any, dict[str, Any]] = OrderedDict()

    def verify(self, data: bytes, source: Any = None) -> Heartbeat | None:
        if type(data) is not bytes:
            try:
                data = bytes(data)
            except Exception:
                self.dropped["size"] += 1
                return None
        n = len(data)
        if n > MAX_PACKET or n < _MIN_PACKET:
            self.dropped["size"] += 1
            return None
        # Magic, version and group tag in one compare: the cheap way out for
        # strangers and other groups.
        if data[: len(self._prefix)] != self._prefix:
            self.dropped["tag"] += 1
            return None
        signed = data[:-MAC_BYTES]
        if not hmac.compare_digest(hmac.digest(self._mac_key, signed, "sha256"), data[-MAC_BYTES:]):
            self.dropped["mac"] += 1
            return None

        _, _, _, instance, seq, ts_ms = HEADER.unpack_from(data)
        try:
            body = json.loads(signed[HEADER.size :].decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            body = None
        if type(body) is not dict:
            self.dropped["json"] += 1
            return None

        now = self.clock()
        skew = ts_ms / 1000.0 - now
        if abs(skew) > self.window_s:
            self.dropped["skew"] += 1
            self._note_skew(source if source is not None else instance.hex(), body, skew, now)
            return None

        last = self._last_seq.get(instance)
        if last is not None and seq <= last:
            self.dropped["replay"] += 1
            return None
        self._last_seq[instance] = seq
        self._last_seq.move_to_end(instance)
        if len(self._last_seq) > self.max_instances:
            self._last_seq.popitem(last=False)
        return Heartbeat(instance, seq, ts_ms, body)

    def _note_skew(self, who: Any, body: dict[str, Any], skew: float, now: float) -> None:
        self.skewed[who] = {"name": body.get("name"), "skew_s": skew, "at": now}
        self.skewed.move_to_end(who)
        if len(self.skewed) > _MAX_SKEWED:
            self.skewed.popitem(last=False)
