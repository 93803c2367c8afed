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

from homie.files.receiver import FileSink, Receiver, Sink
from homie.files.sender import Outgoing, Sender
from homie.files.streams import (
    BUFFERS,
    FRAME,
    FRAME_TIMEOUT,
    Changed,
    Corrupted,
    CutShort,
    Shrank,
    TooLong,
    TransferError,
)

__all__ = ["BUFFERS", "FRAME", "FRAME_TIMEOUT", "Changed", "Corrupted", "CutShort", "FileSink", "Outgoing",
           "Receiver", "Sender", "Shrank", "Sink", "TooLong", "TransferError"]
