"""The local control socket: how the CLI talks to its daemon.

A unix socket in the home, mode 0600: only the owner of the home (and root)
can drive the daemon. Frames and message names are the job channel's
(homie.protocol, homie.messages); each connection carries one request, whose
answer is a `reply`, a `fail`, or a stream of `event`s and output frames.

The client half is imported by the CLI, so it must stay light: no
cryptography, psutil or yaml at import time.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from homie import protocol
from homie.errors import EXIT_NO_DAEMON, HomieError, ProtocolError


class NoDaemon(HomieError):
    exit_code = EXIT_NO_DAEMON


# -- client (CLI side) ----------------------------------------------------------


class ControlClient:
    def __init__(self, home, timeout: float | None = 10.0):
        from homie.channel import Channel

        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(home.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise NoDaemon("homie is not running; start it with: homie up") from None
        except PermissionError:
            s.close()
            raise NoDaemon(f"no permission to use {home.socket} (is the daemon another user's?)") from None
        self.ch = Channel(s)

    def request(self, t: str, **fields) -> dict:
        self.ch.send(t, **fields)
        msg = self.ch.recv_msg("reply", "fail")
        self.ch.close()
        if msg.t == "fail":
            raise HomieError(msg["message"], msg.get("exit_code", 1))
        return msg.body

    def stream(self, t: str, **fields):
        """Yield events and output frames until the daemon ends the stream."""
        from homie.channel import ConnectionClosed

        self.ch.send(t, **fields)
        self.ch.sock.settimeout(None)
        while True:
            try:
                ev = self.ch.recv()
            except ConnectionClosed:
                raise HomieError("the homie daemon stopped", EXIT_NO_DAEMON) from None
            if isinstance(ev, protocol.Message):
                if ev.t == "fail":
                    self.ch.close()
                    raise HomieError(ev["message"], ev.get("exit_code", 1))
                if ev.t == "reply":
                    self.ch.close()
                    yield ev
                    return
            yield ev

    def close(self) -> None:
        self.ch.close()


# -- server (daemon side) --------------------------------------------------------


class ControlServer:
    def __init__(self, node):
        self.node = node
        self.log = node.log
        self.sock: socket.socket | None = None

    def bind(self) -> None:
        path = str(self.node.home.socket)
        # Only one daemon holds the pid lock, so a socket file here is a dead
        # daemon's leftover: replace it.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            s.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        s.listen(64)
        s.settimeout(0.5)
        self.sock = s

    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                assert self.sock is not None  # bound by start()
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if stop.is_set():
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self._handle, args=(conn,), name="control-conn", daemon=True).start()

    def close(self) -> None:
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass

    def _handle(self, conn: socket.socket) -> None:
        from homie.channel import Channel, ConnectionClosed
        from homie.control_handlers import Handlers

        ch = Channel(conn)
        try:
            msg = ch.recv_msg(timeout=30)
            conn.settimeout(None)
            handler = getattr(Handlers(self.node, ch), f"do_{msg.t}", None)
            if handler is None:
                ch.send("fail", message=f"unknown request {msg.t!r}", exit_code=2)
                return
            handler(msg)
        except HomieError as e:
            try:
                ch.send("fail", message=printable(str(e)), exit_code=e.exit_code)
            except ConnectionClosed:
                pass
        except (TimeoutError, ConnectionClosed, ProtocolError):
            pass
        except Exception as e:
            self.log.exception("control.request_failed")
            try:
                ch.send("fail", message=printable(f"internal error: {type(e).__name__}: {e}"), exit_code=73)
            except Exception:
                pass
        finally:
            ch.close()


def printable(text: str) -> str:
    """A message that may quote an undecodable file name (surrogate escapes) as
    sendable text: the bad bytes shown as \\xNN, so the user still gets the message."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def signal_number(name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    s = str(name_or_number).upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    return int(getattr(signal, s))
