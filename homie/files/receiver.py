"""The receiving half of the transfer engine (see homie.files.engine)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from homie.files.streams import BUFFERS, FRAME, FRAME_TIMEOUT, Corrupted, CutShort, TooLong, TransferError, _Slot
from homie.wire.protocol import Data


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
        if frame < FRAME:
            # Channel.recv(into=) fills the buffer it is given: a smaller one would take
            # part of a frame and read the rest of its payload (the sender's bytes) as frames.
            raise ValueError(f"receiving buffers must hold a whole DATA frame ({FRAME} bytes)")
        self.ch = ch
        self.timeout = timeout
        # Buffers are made as first needed and the threads start with the first frame:
        # a job of a few small files (most of them) costs one buffer, not 8 MiB zeroed
        # and two threads (measured: 10% of a worker's CPU under a map of tiny inputs).
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._made = 0
        self._max = buffers
        self._frame = frame
        self._lock = threading.Lock()
        self._hq: queue.Queue[tuple | None] = queue.Queue()
        self._wq: queue.Queue[tuple | None] = queue.Queue()
        self._werr: BaseException | None = None
        self.received = 0
        self._threads: list[threading.Thread] = []

    def _slot(self) -> _Slot:
        if not self._threads:
            self._threads = [threading.Thread(target=self._hash_loop, name="recv-hash", daemon=True),
                             threading.Thread(target=self._write_loop, name="recv-write", daemon=True)]
            for t in self._threads:
                t.start()
        if self._made < self._max and self._free.empty():
            self._made += 1
            return _Slot(self._frame)
        return self._free.get()

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
        if not self._threads:
            return  # nothing was ever queued
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
                slot = self._slot()
                try:
                    ev = self.ch.recv(timeout=self.timeout, into=slot.buf)
                except BaseException:
                    self._free.put(slot)
                    raise
                if not isinstance(ev, Data):
                    self._free.put(slot)
                    raise CutShort(f"{what} cut short ({got} of {size} bytes)")
                n = len(ev.data)
                if not n:
                    # Never sent by the engine; 5 bytes each to the sender, a round of
                    # all three threads here, and the stream gets no closer to its end.
                    self._free.put(slot)
                    raise TransferError(f"{what}: an empty data frame")
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
        if not self._threads:
            return
        self._hq.put(None)
        self._wq.put(None)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
