"""Moving job files safely: manifests, hostile-name checks, safe writes, caches.

Design (docs: design-notes section 4 "Moving files"; docs/architecture.md section 4 "Data path"):

* The submitter sends a manifest of ``{path, mode, size, sha256}`` entries; the
  worker answers with the hashes it lacks and only those bytes travel.
  :class:`HashCache` keeps the submitter from re-reading unchanged files and
  :class:`BlobCache` is the worker's content-addressed store.
* No tar. Every name that crosses the network goes through
  :func:`validate_manifest`, and every file is written by :class:`SafeWriter`,
  which walks the tree with ``dir_fd`` + ``O_NOFOLLOW`` + ``O_EXCL`` so that a
  symlink planted by a previous job (or anyone else) cannot redirect a write.
* :func:`collect` decides what ``homie run`` ships; which files of a finished
  job come back is homie.worker.jobdir's (walked by descriptor, never through a link).
* Bytes cross a job channel only through the transfer engine,
  homie.files.engine (imported where it is used, not here).

The package, by what each module owns:

    manifest    FileEntry, check_relpath, validate_manifest: names from the network
    safewrite   SafeWriter: writes under a root that never follow a link
    blobs       BlobCache, BlobWriter: the worker's content-addressed store
    hashcache   HashCache: the submitter's remembered hashes
    hashing     sha256_fd: the one way a file is hashed
    atomic      atomic_write: the one way a small file is replaced
    collect     collect, summarize: what ``homie run`` ships (ignore rules)
    engine      Sender, Receiver: the pipelined transfer engine (sender, receiver, streams)

Only the standard library is imported at module load; pathspec is imported when
a directory is actually walked so that ``homie peers`` stays fast.
"""

from __future__ import annotations

from homie.files.atomic import atomic_write
from homie.files.blobs import BlobCache, BlobWriter
from homie.files.collect import Collected, collect, summarize
from homie.files.hashcache import HashCache
from homie.files.hashing import sha256_fd, sha256_path
from homie.files.manifest import (
    DEFAULT_SKIP_DIRS,
    MODE_EXEC,
    MODE_FILE,
    RESERVED_DIR,
    FileEntry,
    _check_collisions,
    _fold,
    check_relpath,
    validate_manifest,
)
from homie.files.safewrite import SafeWriter

__all__ = [
    "FileEntry",
    "validate_manifest",
    "check_relpath",
    "SafeWriter",
    "BlobCache",
    "BlobWriter",
    "HashCache",
    "Collected",
    "collect",
    "summarize",
    "atomic_write",
    "sha256_fd",
    "sha256_path",
    "DEFAULT_SKIP_DIRS",
    "RESERVED_DIR",
    "MODE_FILE",
    "MODE_EXEC",
    "_fold",
    "_check_collisions",
]
