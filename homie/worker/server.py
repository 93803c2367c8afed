"""The worker's server: accepts connections, seats them at the gate, does the
TLS handshake under one deadline and hands each authenticated channel to the
session. I/O only: what a request means is homie.worker.session's."""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable

from homie import PROTOCOL_VERSION, __version__
from homie.admission import ConnectionGate
from homie.errors import HomieError, ProtocolError
from homie.wire import protocol, waitfd
from homie.wire.channel import Channel, ConnectionClosed, accepted, hang_up
from homie.wire.protocol import Conversation

HANDSHAKE_TIMEOUT = 2.0
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 16


class Server:
    def __init__(self, config, log, me, trust, peer_name: Callable[[ssl.SSLSocket], str], warn: Callable[..., None],
                 bind_address: str | None, session: Callable[[Channel, str, str], None]):
        self.config = config
        self.log = log
        self.me = me
        self.trust = trust
        self.peer_name = peer_name
        self.warn = warn
        self.bind_address = bind_address
        self.session = session
        self.gate = ConnectionGate(MAX_CONNECTIONS, MAX_PER_ADDRESS, handshake_deadline=HANDSHAKE_TIMEOUT)
        self.sock: socket.socket | None = None

    def bind(self) -> socket.socket:
        addr = self.bind_address or "0.0.0.0"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, self.config.port))
        except OSError as e:
            s.close()
            raise HomieError(f"cannot listen for jobs on {addr}:{self.config.port}: {e.strerror}"
                             " (is another program using the port? set `port:` in config or pass --port)") from None
        s.listen(128)
        self.sock = s
        return s

    def serve(self, stop: threading.Event) -> None:
        assert self.sock is not None, "bind() first"
        for raw, addr in accepted(self.sock, stop):
            ip = addr[0]
            # Seats before any TLS work: idle or half-open connections cost a seat, not a
            # handshake, and members who authenticated recently keep seats of their own.
            conn = _Conn(raw)
            d = self.gate.admit(ip, conn)
            if not d.admitted:
                self.warn("worker.connection_refused", d.reason or "too many connections", ip=ip)
                raw.close()
                continue
            if d.victim is not None:
                d.victim.cut()  # type: ignore[attr-defined]  # its thread wakes, fails its handshake and gives the seat back
            threading.Thread(target=self._connection, args=(conn, ip), name=f"conn-{ip}", daemon=True).start()

    def _connection(self, conn: _Conn, ip: str) -> None:
        ch = None
        try:
            # Small frames (hello, need, exit) must not wait for Nagle + delayed ACK (~40 ms each).
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tls = self._handshake(conn)
            except (ssl.SSLError, OSError) as e:
                self.warn("worker.tls_refused", "TLS handshake failed (wrong key or not homie)",
                                    ip=ip, error=type(e).__name__)
                return
            if not self.gate.authenticated(conn):
                return  # evicted just as its handshake finished: the seat is someone else's
            peer = self.peer_name(tls)
            ch = Channel(tls, Conversation(protocol.SERVER))
            ch.send("hello", name=self.me.name, proto=PROTOCOL_VERSION, homie=__version__,
                    python="{}.{}.{}".format(*sys.version_info[:3]), instance=self.me.instance)
            self.session(ch, peer, ip)
        except (ConnectionClosed, TimeoutError):
            pass
        except ProtocolError as e:
            self.warn("worker.protocol_error", "peer broke the protocol", ip=ip, error=str(e))
            if ch is not None:
                try:
                    ch.send_error(f"protocol error: {e}", "protocol")
                except Exception:
                    pass
        except Exception as e:  # the daemon never dies of a peer's mistake
            self.log.exception("worker.connection_crashed", ip=ip, error=str(e))
        finally:
            if ch is not None:
                ch.close()
            else:
                try:
                    conn.sock.close()
                except OSError:
                    pass
            self.gate.release(conn)

    def _handshake(self, conn: _Conn) -> ssl.SSLSocket:
        """TLS handshake with one deadline for the whole of it: a per-read
        timeout alone lets a slow-loris client trickle bytes forever."""
        raw = conn.sock
        raw.setblocking(False)
        tls = self.trust.server_context().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        conn.sock = tls  # the TLS socket owns the fd now: an eviction must shut that one down
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                write = False
            except ssl.SSLWantWriteError:
                write = True
            left = deadline - time.monotonic()
            if left <= 0 or not waitfd.ready(tls, left, write=write):
                raise TimeoutError("TLS handshake took too long")
        tls.setblocking(True)
        return tls

    def close(self) -> None:
        if self.sock:
            hang_up(self.sock)  # wakes the thread blocked in accept()


class _Conn:
    """A connection's seat at the gate; follows the socket from raw to TLS."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def cut(self) -> None:
        # The OS socket's shutdown, not SSLSocket's: a pending handshake then fails as EOF.
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
