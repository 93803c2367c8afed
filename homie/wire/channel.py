"""Blocking framed I/O on a socket (TLS job channel or the unix control socket).

Only I/O lives here; framing rules are in homie.wire.protocol and the order of
messages in protocol.Conversation. Bulk data moves on blocking sockets in
threads: receiving TLS through asyncio streams tops out far below what a
blocking SSLSocket reaches (see docs/architecture.md, "Data path").
"""

from __future__ import annotations

import _socket  # the socket module's C core: SHUT_RDWR without socket's enums (~3 ms at start-up)
import _thread
import time

from homie.errors import ProtocolError
from homie.wire import protocol
from homie.wire.protocol import Conversation, Data, Event, Message, Output

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class ConnectionClosed(Exception):
    """The other end closed the connection (or it dropped)."""


class Channel:
    def __init__(self, sock: _socket.socket, conversation: Conversation | None = None):
        self.sock = sock
        self.conv = conversation
        self._send_lock = _thread.allocate_lock()  # threading.Lock, without importing threading
        self._hdr = bytearray(protocol.HEADER.size)
        # Grown to the largest frame seen, not allocated at the caps up front: a daemon
        # driving a thousand jobs holds a thousand channels, most of them for small frames.
        self._buf = bytearray(4096)
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False

    # -- sending -----------------------------------------------------------
    def _sendall(self, *parts) -> None:
        try:
            for part in parts:
                self.sock.sendall(part)
                self.bytes_out += len(part)
        except (OSError, ValueError) as e:
            raise ConnectionClosed(str(e) or type(e).__name__) from None

    def send(self, t: str, **fields) -> None:
        frame = protocol.encode_msg(t, **fields)
        with self._send_lock:
            if self.conv:
                self.conv.send(Message(t, fields))
            self._sendall(frame)

    def send_error(self, message: str, code: str) -> None:
        """The last frame of a conversation the other side broke: whatever state it was in."""
        frame = protocol.encode_msg("error", message=message, code=code)
        with self._send_lock:
            if self.conv:
                self.conv.abort()
            self._sendall(frame)

    def send_data(self, chunk) -> None:
        with self._send_lock:
            if self.conv:
                self.conv.send(Data(b""))
            self._sendall(protocol.data_header(len(chunk)), chunk)

    def send_output(self, stream: int, end: int, data: bytes) -> None:
        frame = protocol.encode_output(stream, end, data)
        with self._send_lock:
            if self.conv:
                self.conv.send(Output(stream, end, b""))
            self._sendall(frame)

    # -- receiving ---------------------------------------------------------
    def _recv_into(self, view: memoryview, deadline: float | None) -> None:
        got = 0
        n = len(view)
        while got < n:
            if deadline is not None:
                # The timeout bounds a whole frame, not each gap between bytes: a peer
                # dribbling a byte every few seconds must not hold a slot for ever.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the peer sent too slowly (one frame took longer than the timeout)")
                self.sock.settimeout(left)
            try:
                r = self.sock.recv_into(view[got:], n - got)
            except TimeoutError:
                raise
            except (OSError, ValueError) as e:
                raise ConnectionClosed(str(e) or type(e).__name__) from None
            if r == 0:
                raise ConnectionClosed("connection closed by peer")
            got += r
        self.bytes_in += n

    def recv(self, timeout: float | None = None, into: bytearray | None = None) -> Event:
        """The next event. DATA payloads are views into a reused buffer: valid
        only until the next recv() (so a 1 GiB upload reuses one 1 MiB buffer),
        or into `into` when given, so a pipelined writer can own it."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        budget = self.sock.gettimeout()
        deadline = None if budget is None else time.monotonic() + budget
        try:
            hv = memoryview(self._hdr)
            self._recv_into(hv, deadline)
            length, ftype = protocol.parse_header(bytes(self._hdr))
            if into is not None and ftype == protocol.DATA:
                target = into
            else:
                if length > len(self._buf):
                    self._buf = bytearray(length)  # at most the frame cap: parse_header checked it
                target = self._buf
            view = memoryview(target)[:length]
            self._recv_into(view, deadline)
        finally:
            if budget is not None:
                self.sock.settimeout(budget)  # the next frame gets the whole budget again
        event = protocol.decode_payload(ftype, view)
        if self.conv:
            self.conv.receive(event)
        return event

    def recv_msg(self, *expected: str, timeout: float | None = None) -> Message:
        """The next event, which must be a message of one of `expected` types
        (keepalives are skipped)."""
        while True:
            ev = self.recv(timeout)
            if isinstance(ev, Message) and ev.t in ("ping", "pong"):
                continue
            if not isinstance(ev, Message) or (expected and ev.t not in expected):
                kind = ev.t if isinstance(ev, Message) else type(ev).__name__.lower()
                raise ProtocolError(f"expected {' or '.join(expected)}, got {kind}")
            return ev

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        hang_up(self.sock)


def hang_up(sock: _socket.socket) -> None:
    """Shut a socket down, then close it: shutdown() first wakes a thread blocked in
    accept() or recv() on it, which close() alone does not. Errors mean it is gone already."""
    try:
        sock.shutdown(_socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def accepted(sock: Any, stop: Any) -> Iterator[tuple[Any, Any]]:
    """(connection, address) pairs from a listening socket until `stop` (a
    threading.Event) is set; `hang_up(sock)` from another thread ends it at once.
    A failed accept (EMFILE: out of descriptors) is retried shortly, not spun on."""
    try:
        sock.settimeout(0.5)  # how soon a set `stop` is seen without a hang_up
    except OSError:
        return  # hung up before the loop began (a daemon stopped as it started)
    while not stop.is_set():
        try:
            pair = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            if stop.is_set():
                return
            time.sleep(0.05)
            continue
        yield pair
