"""What both ends of the transfer engine share: frame and pool sizes, the
pooled buffer, and the errors (homie.files.engine tells the whole story)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homie.errors import HomieError
from homie.wire.protocol import MAX_DATA

if TYPE_CHECKING:
    from homie.files.sender import Outgoing

FRAME = MAX_DATA
BUFFERS = 8  # the receiving pool: 8 MiB in flight at most (the sender holds 4)
FRAME_TIMEOUT = 30.0

# -- errors: the caller words them for its user -----------------------------------------------


class TransferError(HomieError):
    """A stream that did not arrive (or could not be sent) whole and correct."""

    item: Outgoing | None = None  # on the sending side: the stream it was about


class CutShort(TransferError):
    """Receiving: something other than DATA came before the announced size was reached."""


class TooLong(TransferError):
    """Receiving: more bytes than announced."""


class Corrupted(TransferError):
    """Receiving: the bytes do not hash to what was announced."""


class Shrank(TransferError):
    """Sending: the source ended before the announced size."""


class Changed(TransferError):
    """Sending: the source no longer hashes to what was announced."""


class _Slot:
    __slots__ = ("buf", "n", "refs")

    def __init__(self, size: int):
        self.buf = bytearray(size)
        self.n = 0
        self.refs = 0
