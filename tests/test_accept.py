"""The accept loop both servers (the worker's TLS port, the control socket) run."""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from homie.wire.channel import accepted, hang_up


def test_each_connection_comes_with_its_address_until_stop():
    lsock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    got = []

    def serve():
        for conn, addr in accepted(lsock, stop):
            got.append((conn.recv(5), addr[0]))
            conn.close()
            if len(got) == 2:
                stop.set()

    t = threading.Thread(target=serve)
    t.start()
    for word in (b"one", b"two"):
        with socket.create_connection(lsock.getsockname()) as c:
            c.sendall(word)
    t.join(10)
    assert not t.is_alive()
    assert got == [(b"one", "127.0.0.1"), (b"two", "127.0.0.1")]
    lsock.close()


@pytest.mark.parametrize("when", ["blocked in accept", "before the loop began"])
def test_hang_up_ends_the_loop(when):
    lsock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    errors = []

    def serve():
        try:
            list(accepted(lsock, stop))
        except Exception as e:  # the daemon's serve thread would die of it
            errors.append(e)

    t = threading.Thread(target=serve)
    if when == "blocked in accept":
        t.start()
        time.sleep(0.2)
    stop.set()
    hang_up(lsock)
    if when == "before the loop began":
        t.start()
    t.join(10)
    assert not t.is_alive() and errors == []


class _OutOfDescriptors:
    """A listening socket whose accept() fails twice (EMFILE), then succeeds."""

    def __init__(self, stop: threading.Event):
        self.calls = 0
        self.stop = stop

    def settimeout(self, _t):
        pass

    def accept(self):
        self.calls += 1
        if self.calls <= 2:
            raise OSError(errno.EMFILE, "Too many open files")
        self.stop.set()
        return "conn", ("10.0.0.1", 1)


def test_a_failed_accept_is_retried_not_fatal():
    stop = threading.Event()
    sock = _OutOfDescriptors(stop)
    assert list(accepted(sock, stop)) == [("conn", ("10.0.0.1", 1))]
    assert sock.calls == 3
