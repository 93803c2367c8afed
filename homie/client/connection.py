"""The wire: one request per connection to the daemon's control socket."""

from __future__ import annotations

import _socket  # the socket module's C core: socket's own import costs each `homie run` ~3 ms (its enums)

from homie.control import shapes
from homie.errors import EXIT_NO_DAEMON, HomieError, NoDaemon, error_for


class Connection:
    """One connection to the daemon's control socket, carrying one request.

    Opening it raises NoDaemon (exit 69) when the daemon is not running. A `fail`
    answer raises the HomieError subclass of its exit code (homie.errors.error_for).
    """

    def __init__(self, home, timeout: float | None = 10.0):
        from homie.wire.channel import Channel

        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(home.socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            raise NoDaemon("homie is not running; start it with: homie up") from None
        except PermissionError:
            s.close()
            raise NoDaemon(f"no permission to use {home.socket} (is the daemon another user's?)") from None
        self.ch = Channel(s)

    def request(self, t: str, **fields) -> dict:
        """Send one request and return the daemon's reply (a dict)."""
        self.ch.send(t, **fields)
        msg = self.ch.recv_msg("reply", "fail")
        self.ch.close()
        if msg.t == "fail":
            raise error_for(msg["message"], msg.get("exit_code", 1))
        return shapes.check(t, msg.body)

    def stream(self, t: str, timeout: float | None = None, **fields):
        """Yield the daemon's events and output frames (homie.wire.protocol objects) until
        it ends the stream with its reply (yielded last). timeout: seconds of silence
        before TimeoutError (None: wait as long as it takes)."""
        from homie.wire import protocol
        from homie.wire.channel import ConnectionClosed

        self.ch.send(t, **fields)
        self.ch.sock.settimeout(timeout)
        try:
            while True:
                try:
                    ev = self.ch.recv()
                except ConnectionClosed:
                    raise HomieError("the homie daemon stopped", EXIT_NO_DAEMON) from None
                except TimeoutError:
                    raise TimeoutError(f"no answer from the homie daemon within {timeout:g} s") from None
                if isinstance(ev, protocol.Message):
                    if ev.t == "fail":
                        raise error_for(ev["message"], ev.get("exit_code", 1))
                    if ev.t == "reply":
                        shapes.check(t, ev.body)
                        yield ev
                        return
                yield ev
        finally:
            self.ch.close()

    def close(self) -> None:
        self.ch.close()
