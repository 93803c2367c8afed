"""Opening a job channel to a peer: TCP, mutual TLS, the server's hello."""

from __future__ import annotations

import socket
import ssl
import threading
import time

from homie import PROTOCOL_VERSION, __version__
from homie.errors import EXIT_PEER_LOST, HomieError
from homie.wire import protocol, waitfd
from homie.wire.channel import Channel, ConnectionClosed
from homie.wire.protocol import Conversation
from homie.wire.trust import SERVER_HOSTNAME

CONNECT_TIMEOUT = 5.0
# A spare connection (see Dialer.connect_warm) is used within this many seconds or
# closed: well inside the worker's idle timeout (worker/session.py, 60 s).
SPARE_TTL = 20.0

# TLS failures that mean "not our group" rather than "the link broke".
_KEY_REFUSALS = {"CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                 "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}


class Dialer:
    """What every outgoing job channel goes through (submitting, checkpoints, doctor)."""

    def __init__(self, trust):
        self.trust = trust
        self._lock = threading.Lock()
        self._spares: dict[tuple[str, int], tuple[Channel, float]] = {}  # (ip, port) -> (channel, dialed at)
        self._dialing: set[tuple[str, int]] = set()

    def connect_warm(self, ip: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Channel:
        """connect(), from a spare connection dialed ahead when there is one, and a new
        spare dialed in the background for the next job to this peer: its TCP and TLS
        handshakes and the greeting stay off the job's path. One spare per peer at most,
        each used within SPARE_TTL or closed."""
        key = (ip, port)
        ch = self._take_spare(key)
        if ch is None:
            ch = self.connect(ip, port, timeout)
        self._refill(key)
        return ch

    def _take_spare(self, key: tuple[str, int]) -> Channel | None:
        now = time.monotonic()
        with self._lock:
            spare = self._spares.pop(key, None)
            stale = [k for k, (_, at) in self._spares.items() if now - at > SPARE_TTL]
            dead = [self._spares.pop(k)[0] for k in stale]
        for ch in dead:
            ch.close()
        if spare is None:
            return None
        ch, at = spare
        # Anything to read on an idle connection means it is over (the worker closed it
        # or restarted): a channel nobody spoke on has nothing to say.
        if now - at > SPARE_TTL or _readable(ch):
            ch.close()
            return None
        return ch

    def _refill(self, key: tuple[str, int]) -> None:
        with self._lock:
            if key in self._spares or key in self._dialing:
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
                old = self._spares.pop(key, None)
                if ch is not None:
                    self._spares[key] = (ch, time.monotonic())
        if old is not None:
            old[0].close()

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
