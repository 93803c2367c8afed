"""Opening a job channel to a peer: TCP, mutual TLS, the server's hello."""

from __future__ import annotations

import socket
import ssl
import threading
import time

from homie import PROTOCOL_VERSION, __version__
from homie.errors import EXIT_PEER_LOST, HomieError, ProtocolError
from homie.wire import protocol, waitfd
from homie.wire.channel import Channel, ConnectionClosed
from homie.wire.protocol import Conversation
from homie.wire.trust import SERVER_HOSTNAME

CONNECT_TIMEOUT = 5.0
# An idle connection (see Dialer.connect_warm) is used within this many seconds or
# closed: well inside the worker's idle timeout (worker/session.py, 60 s).
SPARE_TTL = 20.0
SPARES_PER_PEER = 4

# TLS failures that mean "not our group" rather than "the link broke".
_KEY_REFUSALS = {"CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                 "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}


class Dialer:
    """What every outgoing job channel goes through (submitting, checkpoints, doctor)."""

    def __init__(self, trust):
        self.trust = trust
        self._lock = threading.Lock()
        # (ip, port) -> idle connections to that peer, oldest first, with when they came to rest
        self._spares: dict[tuple[str, int], list[tuple[Channel, float]]] = {}
        self._dialing: set[tuple[str, int]] = set()

    def connect_warm(self, ip: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Channel:
        """connect(), reusing an idle connection to this peer when there is one: one an
        earlier job handed back (give_back), or a spare dialed ahead. When there was none
        and this one had to be dialed on the job's path, a spare is dialed in the
        background for the next job: after a peer's first job, no TCP or TLS handshake
        and no greeting sits on a job's path. Idle connections are kept SPARE_TTL at most,
        SPARES_PER_PEER per peer."""
        key = (ip, port)
        ch = self._take_spare(key)
        if ch is None:
            ch = self.connect(ip, port, timeout)
            self._refill(key)
        return ch

    def give_back(self, ip: str, port: int, ch: Channel) -> None:
        """A connection a job is done with: kept for the next job to this peer when its
        conversation is back at rest (IDLE), else closed."""
        if ch.closed or ch.conv is None or ch.conv.state != protocol.IDLE:
            ch.close()
            return
        with self._lock:
            pool = self._spares.setdefault((ip, port), [])
            if len(pool) < SPARES_PER_PEER:
                pool.append((ch, time.monotonic()))
                return
        try:
            ch.send("bye")
        except (ConnectionClosed, OSError, ProtocolError):
            pass
        ch.close()

    def _take_spare(self, key: tuple[str, int]) -> Channel | None:
        now = time.monotonic()
        dead = []
        found = None
        with self._lock:
            for k, pool in list(self._spares.items()):
                keep = [(ch, at) for ch, at in pool if now - at <= SPARE_TTL]
                dead += [ch for ch, at in pool if now - at > SPARE_TTL]
                if k == key:
                    while keep and found is None:
                        ch, _ = keep.pop()  # the newest
                        # Anything to read on an idle connection means it is over (the
                        # worker closed it or restarted): nobody speaks on one at rest.
                        if _readable(ch):
                            dead.append(ch)
                        else:
                            found = ch
                if keep:
                    self._spares[k] = keep
                else:
                    del self._spares[k]
        for ch in dead:
            ch.close()
        return found

    def _refill(self, key: tuple[str, int]) -> None:
        with self._lock:
            if self._spares.get(key) or key in self._dialing:
                return
            self._dialing.add(key)
        threading.Thread(target=self._dial_spare, args=(key,), name=f"dial-{key[0]}", daemon=True).start()

    def _dial_spare(self, key: tuple[str, int]) -> None:
        ch = None
        try:
            ch = self.connect(*key)
        except (ConnectionClosed, HomieError):
            pass  # the next job dials for itself, and says why if it fails too
        finally:
            with self._lock:
                self._dialing.discard(key)
        if ch is not None:
            self.give_back(*key, ch)

    def connect(self, ip: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Channel:
        """A channel in IDLE state, or ConnectionClosed (the link: try again) or
        HomieError (the peer refused our key or runs another protocol: do not).
        `timeout` bounds the connect and the greeting each."""
        try:
            raw = socket.create_connection((ip, port), timeout=timeout)
        except OSError as e:
            raise ConnectionClosed(f"cannot connect to {ip}:{port}: {e.strerror or e}") from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.trust.client_context().wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
        except ssl.SSLError as e:
            raw.close()
            if isinstance(e, ssl.SSLCertVerificationError) or (e.reason or "") in _KEY_REFUSALS:
                raise HomieError(f"{ip}:{port} refused our group key (TLS: {e.reason or e})",
                                 EXIT_PEER_LOST) from None
            # EOF or a reset mid-handshake is the link (or the 2 s handshake deadline on a
            # lossy link), not the key: the caller tries again.
            raise ConnectionClosed(f"TLS handshake with {ip}:{port} failed: {e.reason or e}") from None
        except OSError as e:
            raw.close()
            raise ConnectionClosed(f"TLS handshake with {ip}:{port} failed: {e}") from None
        ch = Channel(tls, Conversation(protocol.CLIENT))
        try:
            hello = ch.recv_msg("hello", "error", timeout=timeout)
        except TimeoutError:
            ch.close()
            raise ConnectionClosed(f"{ip}:{port} did not greet us") from None
        if hello.t == "error":
            ch.close()
            raise HomieError(f"{ip}:{port}: {hello['message']}", EXIT_PEER_LOST)
        if hello["proto"] != PROTOCOL_VERSION:
            ch.close()
            raise HomieError(
                f"{hello['name']} runs homie {hello['homie']} (protocol {hello['proto']}, Python {hello['python']});"
                f" this machine runs homie {__version__} (protocol {PROTOCOL_VERSION}): upgrade the older one",
                EXIT_PEER_LOST)
        return ch


def _readable(ch: Channel) -> bool:
    pending = getattr(ch.sock, "pending", None)
    try:
        return bool(pending and pending()) or waitfd.ready(ch.sock, 0)
    except (OSError, ValueError):
        return True
