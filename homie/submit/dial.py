"""Opening a job channel to a peer: TCP, mutual TLS, the server's hello."""

from __future__ import annotations

import socket
import ssl

from homie import PROTOCOL_VERSION, __version__
from homie.errors import EXIT_PEER_LOST, HomieError
from homie.wire import protocol
from homie.wire.channel import Channel, ConnectionClosed
from homie.wire.protocol import Conversation
from homie.wire.trust import SERVER_HOSTNAME

CONNECT_TIMEOUT = 5.0

# TLS failures that mean "not our group" rather than "the link broke".
_KEY_REFUSALS = {"CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                 "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}


class Dialer:
    """What every outgoing job channel goes through (submitting, checkpoints, doctor)."""

    def __init__(self, trust):
        self.trust = trust

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
