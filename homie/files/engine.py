"""The transfer engine: every file that crosses a job channel goes through here
(inputs up, results home, checkpoint chunks home), pipelined in both directions.

A stream of N bytes travels as the caller's header message (``blob``), then
DATA frames of at most 1 MiB. The engine moves the bytes; what the header
says and what happens to a verified file (a rename into place) stay with the
caller.

* :class:`Sender`: a reader thread reads (and, where the sender knows the
  hash, hashes) the next chunks while the calling thread encrypts and sends
  the current one. A stream that fits one frame is hashed *before* its
  header goes out, so a checkpoint chunk rewritten under us is refused
  cleanly instead of being sent.
* :class:`Receiver`: the calling thread decrypts the next frame while a hash
  thread and a write thread consume the previous ones (both read the same
  buffer; it is free again once both are done). TLS decryption, SHA-256 and
  write(2) all release the GIL, so on two cores they overlap. The receiver
  always verifies size and hash before it calls ``sink.commit``: the bytes
  of a stream cut short or corrupted never get their final name.

Memory is a fixed pool of frame-sized buffers per direction (``buffers`` ×
1 MiB), whatever the size of the stream.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from homie.errors import HomieError
from homie.files.hashing import read_at
from homie.wire.protocol import MAX_DATA, Data

FRAME = MAX_DATA
BUFFERS = 8  # per direction: 8 MiB in flight at most
FRAME_TIMEOUT = 30.0

# -- errors: the caller words them for its user -----------------------------------------------


class TransferError(HomieError):
    """A stream that did not arrive (or could not be sent) whole and correct."""

    item: Outgoing | None = None  # on the sending side: the stream it was about


class CutShort(TransferError):
    """Something other than DATA came before the announced size was reached."""


class TooLong(TransferError):
    """More bytes than announced."""


class Corrupted(TransferError):
    """The bytes received do not hash to what was announced."""


class Shrank(TransferError):
    """The source ended before the size the sender announced."""


class Changed(TransferError):
    """The source no longer hashes to what the sender announced."""


# -- sending ----------------------------------------------------------------------------------


@dataclass
class Outgoing:
    """One stream to send.

    source: an fd read from ``offset`` (not closed), a callable that opens and
    returns an fd (run on the reader thread; closed after), or an iterable of
    bytes-like pieces (split or joined into frames)."""

    size: int
    source: int | Callable[[], int] | Iterable[Any]
    offset: int = 0
    sha256: str | None = None  # checked as it is read: a mismatch raises Changed
    head: tuple[str, dict[str, Any]] | None = None  # the message sent just before the bytes
    name: str = ""
    tag: Any = field(default=None, repr=False)  # the caller's, handed back in errors


class _Slot:
    __slots__ = ("buf", "n", "refs")

    def __init__(self, size: int):
        self.buf = bytearray(size)
        self.n = 0
        self.refs = 0


class Sender:
    """Sends streams over a channel; one reader thread per :meth:`send` call."""

    def __init__(self, ch, *, buffers: int = 4, frame: int = FRAME):
        self.ch = ch
        self._frame = frame
        self._free: queue.Queue[_Slot] = queue.Queue()
        for _ in range(buffers):
            self._free.put(_Slot(frame))
        self.sent = 0

    def send(self, items: Iterable[Outgoing], *, progress: Callable[[int], None] | None = None,
             every: tuple[int, Callable[[], None]] | None = None) -> None:
        """Send every item in order: its head message, then its bytes. progress(n)
        after each frame; every=(k, fn): fn() after each k frames (the upload
        checks there whether the worker refused it)."""
        work: queue.Queue[tuple] = queue.Queue()
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(iter(items), work, stop), name="send-read", daemon=True)
        reader.start()
        frames = 0
        try:
            while True:
                kind, *rest = work.get()
                if kind == "done":
                    return
                if kind == "error":
                    raise rest[0]
                if kind == "head":
                    self.ch.send(rest[0], **rest[1])
                    continue
                slot = rest[0]
                try:
                    self.ch.send_data(memoryview(slot.buf)[: slot.n])
                finally:
                    self._free.put(slot)
                self.sent += slot.n
                if progress is not None:
                    progress(slot.n)
                frames += 1
                if every is not None and frames % every[0] == 0:
                    every[1]()
        finally:
            stop.set()
            # Unblock a reader waiting for a buffer, then take back what it queued.
            while reader.is_alive():
                self._drain(work)
                reader.join(0.05)
            self._drain(work)

    def _drain(self, work: queue.Queue) -> None:
        while True:
            try:
                kind, *rest = work.get_nowait()
            except queue.Empty:
                return
            if kind == "data":
                self._free.put(rest[0])

    def _slot(self, stop: threading.Event) -> _Slot | None:
        while not stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def _read(self, items: Iterator[Outgoing], work: queue.Queue, stop: threading.Event) -> None:
        item = None
        try:
            for item in items:
                if stop.is_set() or not self._read_one(item, work, stop):
                    return
            work.put(("done",))
        except BaseException as e:  # handed to the sending thread, in order
            if isinstance(e, TransferError):
                e.item = item
            work.put(("error", e))

    def _read_one(self, item: Outgoing, work: queue.Queue, stop: threading.Event) -> bool:
        h = hashlib.sha256() if item.sha256 is not None else None
        # A stream of one frame is read and checked before anything of it is sent.
        held: list[_Slot] = []
        whole = item.size <= self._frame
        fd, close = self._open(item)
        if not whole and item.head is not None:
            work.put(("head", *item.head))
        pieces = iter(item.source) if fd is None else None  # type: ignore[arg-type]
        pending = b""
        try:
            done = 0
            while done < item.size:
                slot = self._slot(stop)
                if slot is None:
                    return False
                want = min(self._frame, item.size - done)
                view = memoryview(slot.buf)
                try:
                    if fd is not None:
                        n = 0
                        while n < want:
                            r = read_at(fd, view[n:want], item.offset + done + n)
                            if not r:
                                break
                            n += r
                    else:
                        n, pending = _fill(view[:want], pending, pieces)
                except BaseException:
                    self._free.put(slot)
                    raise
                if n < want:
                    self._free.put(slot)
                    raise Shrank(f"{item.name or 'source'} ended after {done + n} of {item.size} bytes")
                if h is not None:
                    h.update(view[:n])
                slot.n = n
                done += n
                if whole:
                    held.append(slot)
                else:
                    work.put(("data", slot))
            if h is not None and h.hexdigest() != item.sha256:
                for slot in held:
                    self._free.put(slot)
                held = []
                raise Changed(f"{item.name or 'source'} changed while it was being sent")
            if whole:
                if item.head is not None:
                    work.put(("head", *item.head))
                for slot in held:
                    work.put(("data", slot))
                held = []
            return True
        finally:
            for slot in held:
                self._free.put(slot)
            if close:
                os.close(fd)  # type: ignore[arg-type]

    @staticmethod
    def _open(item: Outgoing) -> tuple[int | None, bool]:
        if isinstance(item.source, int):
            return item.source, False
        if callable(item.source):
            return item.source(), True
        return None, False


def _fill(view: memoryview, pending: Any, pieces: Iterator[Any] | None) -> tuple[int, Any]:
    """Copy pieces into view until it is full or they run out; (bytes copied, leftover)."""
    n = 0
    want = len(view)
    while n < want:
        if not len(pending):
            pending = next(pieces, None) if pieces is not None else None
            if pending is None:
                return n, b""
            pending = memoryview(pending).cast("B")
            continue
        take = min(want - n, len(pending))
        view[n : n + take] = pending[:take]
        pending = pending[take:]
        n += take
    return n, pending


# -- receiving --------------------------------------------------------------------------------


class Sink(Protocol):
    """Where one received stream goes. write() runs on the engine's write
    thread, in order; commit(digest) only after every byte was written and
    the hash checked; abort() once the writer is idle."""

    def write(self, data: memoryview) -> Any: ...

    def commit(self, digest: str) -> None: ...

    def abort(self) -> None: ...


class FileSink:
    """A sink onto a new file (one from SafeWriter.open_new, say): commit
    flushes and closes it; publishing it under its final name is the caller's."""

    def __init__(self, f, fsync: bool = False):
        self.f = f
        self.fsync = fsync

    def write(self, data: memoryview) -> None:
        self.f.write(data)

    def commit(self, digest: str) -> None:
        self.f.flush()
        if self.fsync:
            os.fsync(self.f.fileno())
        self.f.close()

    def abort(self) -> None:
        self.f.close()


class Receiver:
    """Receives streams from a channel into sinks. Use as a context manager
    (or close()): it owns a hash thread and a write thread."""

    def __init__(self, ch, *, buffers: int = BUFFERS, frame: int = FRAME, timeout: float = FRAME_TIMEOUT):
        self.ch = ch
        self.timeout = timeout
        self._free: queue.Queue[_Slot] = queue.Queue()
        for _ in range(buffers):
            self._free.put(_Slot(frame))
        self._lock = threading.Lock()
        self._hq: queue.Queue[tuple | None] = queue.Queue()
        self._wq: queue.Queue[tuple | None] = queue.Queue()
        self._werr: BaseException | None = None
        self.received = 0
        self._threads = [threading.Thread(target=self._hash_loop, name="recv-hash", daemon=True),
                         threading.Thread(target=self._write_loop, name="recv-write", daemon=True)]
        for t in self._threads:
            t.start()

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.refs -= 1
            free = slot.refs == 0
        if free:
            self._free.put(slot)

    def _hash_loop(self) -> None:
        while (item := self._hq.get()) is not None:
            slot, h = item
            if slot is None:
                h.set()  # a marker: everything before it is done
                continue
            try:
                h.update(memoryview(slot.buf)[: slot.n])
            finally:
                self._release(slot)

    def _write_loop(self) -> None:
        while (item := self._wq.get()) is not None:
            slot, sink = item
            if slot is None:
                sink.set()
                continue
            try:
                # After an error the data is dropped, but markers still run, so _sync() returns.
                if self._werr is None:
                    sink.write(memoryview(slot.buf)[: slot.n])
            except BaseException as e:  # handed to the receiving thread
                self._werr = e
            finally:
                self._release(slot)

    def _sync(self) -> None:
        """Wait until the hash and write threads are done with everything queued."""
        marks = (threading.Event(), threading.Event())
        self._hq.put((None, marks[0]))
        self._wq.put((None, marks[1]))
        for m in marks:
            m.wait()

    def _check(self) -> None:
        if self._werr is not None:
            err, self._werr = self._werr, None
            raise err

    def receive(self, size: int, sha256: str, sink: Sink, *, progress: Callable[[int], None] | None = None,
                what: str = "file") -> str:
        """The next `size` bytes of DATA frames into sink; the hex digest, once
        it matched sha256 and sink.commit() returned. On any failure sink.abort()
        runs after the write thread let go of it, and the error is raised."""
        h = hashlib.sha256()
        got = 0
        try:
            while got < size:
                self._check()
                slot = self._free.get()
                try:
                    ev = self.ch.recv(timeout=self.timeout, into=slot.buf)
                except BaseException:
                    self._free.put(slot)
                    raise
                if not isinstance(ev, Data):
                    self._free.put(slot)
                    raise CutShort(f"{what} cut short ({got} of {size} bytes)")
                n = len(ev.data)
                if got + n > size:
                    self._free.put(slot)
                    raise TooLong(f"{what} longer than announced")
                got += n
                slot.n = n
                slot.refs = 2
                self._hq.put((slot, h))
                self._wq.put((slot, sink))
                if progress is not None:
                    progress(n)
            self._sync()
            self._check()
            digest = h.hexdigest()
            if digest != sha256:
                raise Corrupted(f"{what} arrived corrupted (hash mismatch)")
            sink.commit(digest)
            self.received += size
            return digest
        except BaseException:
            self._sync()
            self._werr = None
            try:
                sink.abort()
            except Exception:
                pass
            raise

    def close(self) -> None:
        self._hq.put(None)
        self._wq.put(None)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
