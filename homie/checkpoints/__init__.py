"""Self-checkpointing jobs: what the worker sends home and what the submitter keeps.

A job declares checkpoint paths (files or directories of its job directory;
`checkpoint/` always, as $HOMIE_CHECKPOINT_DIR). The worker's `Watcher`
notices when they hold a new *complete* checkpoint and takes a `Snapshot`:
an open descriptor on every file, so a job that writes its next checkpoint
meanwhile (write, then rename) cannot change what is being sent. The
submitter's `Store` keeps the last complete checkpoint, fetches only the
1 MiB chunks it does not already hold, and commits a new version by one
atomic rename of its pointer: a checkpoint cut short is never the one
restored, and a restart of either side finds the last committed one.

What counts as complete: a file whose name does not look temporary (leading
dot, `.tmp`, `.part`, `~`), unchanged (size, mtime, inode) for SETTLE seconds
before it is taken (a change seen in that pause starts it again from the new
state, up to SETTLE_TRIES times) and while it is read. A job that writes into a temporary name and renames it
into place (what torch.save + os.replace, Keras and most trainers do) can
never have half a file taken.

The package: `rules` (what a checkpoint is: paths, temporary names, the
manifest's shape), `snapshot` (the worker: `Watcher`, `Snapshot`), `store`
(the submitter: `Store`), `exchange` (the `ckpt_fetch` conversation, whose
bytes go through the transfer engine, homie.files.engine).
"""

from __future__ import annotations

from homie.checkpoints.exchange import fetch, serve
from homie.checkpoints.rules import (
    CHUNK,
    DEFAULT_DIR,
    FRAME_TIMEOUT,
    MAX_BYTES,
    MAX_FILES,
    MAX_PATHS,
    SETTLE,
    SETTLE_TRIES,
    TEMP_SUFFIXES,
    CkptFile,
    Signature,
    is_regular,
    is_temporary,
    normalize,
    parse_manifest,
    under,
)
from homie.checkpoints.snapshot import Snapshot, Watcher, sendable, signature, take
from homie.checkpoints.store import Saved, Store

__all__ = [
    "CHUNK", "DEFAULT_DIR", "FRAME_TIMEOUT", "MAX_BYTES", "MAX_FILES", "MAX_PATHS", "SETTLE", "SETTLE_TRIES",
    "TEMP_SUFFIXES", "CkptFile", "Signature", "is_regular", "is_temporary", "normalize", "parse_manifest", "under",
    "Snapshot", "Watcher", "sendable", "signature", "take", "Saved", "Store", "fetch", "serve",
]
