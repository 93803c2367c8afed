"""Blocking framed I/O on a socket (TLS job channel or the unix control socket).

Only I/O lives here; framing rules are in homie.wire.protocol and the order of
messages in protocol.Conversation. Bulk data moves on blocking sockets in
threads: receiving TLS through asyncio streams tops out far below what a
blocking SSLSocket reaches (see docs/architecture.md, "Data path").
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from homie.errors import ProtocolError
from homie.wire import protocol
from homie.wire.protocol import Conversation, Data, Event, Message, Output


class ConnectionClosed(Exception):
    """The other end closed the connection (or it dropped)."""


class Channel:
    def __init__(self, sock: socket.socket, conversation: Conversation | None = None):
        self.sock = sock
        self.conv = conversation
        self._send_lock = threading.Lock()
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
    def _recv_into(self, view: memoryview) -> None:
        got = 0
        n = len(view)
        while got < n:
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
        hv = memoryview(self._hdr)
        self._recv_into(hv)
        length, ftype = protocol.parse_header(bytes(self._hdr))
        if into is not None and ftype == protocol.DATA:
            target = into
        else:
            if length > len(self._buf):
                self._buf = bytearray(length)  # at most the frame cap: parse_header checked it
            target = self._buf
        view = memoryview(target)[:length]
        self._recv_into(view)
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
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class Pipeline:
    """Hashes and writes received chunks on a second thread while the first
    reads the next ones from the socket: TLS decryption, SHA-256 and the file
    write each release the GIL, so on two cores they overlap. A fixed pool of
    buffers bounds memory however large the transfer."""

    def __init__(self, buffers: int = 8, size: int = protocol.MAX_DATA):
        import queue

        # Buffers are made as they are first needed and the thread starts with the first
        # chunk: a job of a few small files (most of them) costs one buffer, not 8 MiB
        # zeroed and a thread per upload.
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._made = 0
        self._max = buffers
        self._size = size
        self._work: queue.Queue[tuple[Any, bytearray | None, int] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            fn, buf, n = item
            try:
                # After an error, data is dropped but markers (buf None) still
                # run, so drain() always returns.
                if buf is None:
                    fn(None)
                elif self._error is None:
                    fn(memoryview(buf)[:n])
            except BaseException as e:  # handed to the reading thread in check()
                self._error = e
            finally:
                if buf is not None:
                    self._free.put(buf)

    def buffer(self) -> bytearray:
        self.check()
        if self._made < self._max and self._free.empty():
            self._made += 1
            return bytearray(self._size)
        return self._free.get()

    def give_back(self, buf: bytearray) -> None:
        self._free.put(buf)

    def put(self, fn, buf: bytearray | None = None, n: int = 0) -> None:
        """Run fn(view of buf[:n]) (or fn(None)) on the writer thread, in order."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
            self._thread.start()
        self._work.put((fn, buf, n))

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def drain(self) -> None:
        """Wait until everything queued so far is done; re-raise a writer error."""
        if self._thread is None:
            self.check()
            return
        done = threading.Event()
        self._work.put((lambda _: done.set(), None, 0))
        done.wait()
        self.check()

    def drain_quietly(self) -> None:
        try:
            self.drain()
        except BaseException:
            pass

    def close(self) -> None:
        if self._thread is not None:
            self._work.put(None)
            self._thread.join(5)
