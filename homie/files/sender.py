"""The sending half of the transfer engine (see homie.files.engine)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from homie.files.hashing import read_at
from homie.files.streams import FRAME, Changed, Shrank, TransferError, _Slot


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


class Sender:
    """Sends streams over a channel; one reader thread per :meth:`send` call."""

    def __init__(self, ch, *, buffers: int = 4, frame: int = FRAME):
        self.ch = ch
        self._frame = frame
        # Buffers are made as first needed: most jobs are a few small files, and a
        # map of tiny inputs should not zero 4 MiB per job.
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._made = 0
        self._max = buffers
        self._made_lock = threading.Lock()
        self.sent = 0

    def send(self, items: Iterable[Outgoing], *, progress: Callable[[int], None] | None = None,
             every: tuple[int, Callable[[], None]] | None = None) -> None:
        """Send every item in order: its head message, then its bytes. progress(n)
        after each frame; every=(k, fn): fn() after each k frames (the upload
        checks there whether the worker refused it)."""
        if isinstance(items, (list, tuple)) and not items:
            return  # nothing the worker lacks (a map's inputs cached): no reader thread for it
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
        if self._free.empty():
            with self._made_lock:
                if self._made < self._max:
                    self._made += 1
                    return _Slot(self._frame)
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
        if isinstance(item.source, int):
            fd, close = item.source, False
        elif callable(item.source):
            fd, close = item.source(), True
        else:
            fd, close = None, False
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
