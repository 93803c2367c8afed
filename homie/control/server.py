"""The local control socket: how the CLI (and homie.client) talk to the daemon.

A unix socket in the home, mode 0600: only the owner of the home (and root)
can drive the daemon. Frames and message names are the job channel's
(homie.wire.protocol, homie.wire.messages); each connection carries one request, whose
answer is a `reply`, a `fail`, or a stream of `event`s and output frames.

This module is the server half; the client half is homie.client.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The client half lives in homie.client (the Python API, which the CLI uses too);
# the old names stay importable from here.
from homie.client.connection import Connection as ControlClient  # noqa: F401
from homie.client.job import signal_number  # noqa: F401
from homie.errors import HomieError, NoDaemon, ProtocolError  # noqa: F401
from homie.wire.channel import accepted, hang_up

if TYPE_CHECKING:
    from homie.control.handlers import Services

# -- server (daemon side) --------------------------------------------------------


class ControlServer:
    """Accepts connections on the unix socket; each request goes to a fresh
    `Handlers` over the daemon's `Services`. I/O only: the policy is in the handlers."""

    def __init__(self, path: Path, log: Any, services: Services):
        self.path = path
        self.log = log
        self.services = services
        self.sock: socket.socket | None = None

    def bind(self) -> None:
        path = str(self.path)
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
        self.sock = s

    def serve(self, stop: threading.Event) -> None:
        assert self.sock is not None, "bind() first"
        for conn, _ in accepted(self.sock, stop):
            threading.Thread(target=self._handle, args=(conn,), name="control-conn", daemon=True).start()

    def close(self) -> None:
        if self.sock:
            hang_up(self.sock)  # wakes the thread blocked in accept()

    def _handle(self, conn: socket.socket) -> None:
        from homie.control.handlers import Handlers
        from homie.wire import classes
        from homie.wire.channel import Channel, ConnectionClosed

        ch = Channel(conn)
        try:
            msg = ch.recv_msg(timeout=30)
            conn.settimeout(None)
            handler = getattr(Handlers(self.services, ch), f"do_{msg.t}", None)
            if handler is None:
                ch.send("fail", message=f"unknown request {msg.t!r}", exit_code=2)
                return
            handler(classes.typed(msg))
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
