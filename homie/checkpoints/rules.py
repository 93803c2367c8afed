"""What a checkpoint is: its paths, which names are temporary, and the shape of
its manifest on the wire (checked like any file list)."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from homie import files
from homie.errors import ManifestError, ProtocolError
from homie.files.hashing import CHUNK

# CHUNK (1 MiB) is the unit of change: a 200 MB checkpoint with 1 MB changed sends about 1 MB
SETTLE = 0.25  # seconds a checkpoint must stay unchanged, just before it is taken
# A change seen while settling starts the pause again from the new state, this many
# times per poll: a job that renames a checkpoint in every half second is quiet just
# after each rename, so the second pause nearly always holds.
SETTLE_TRIES = 4
MAX_FILES = 256  # descriptors one snapshot may hold open (a daemon may run many jobs)
MAX_PATHS = 64  # declared paths, `checkpoint` included: every entry a poll walks is matched against each
MAX_BYTES = 8 << 30  # read whole at every change (a sparse file costs the job nothing); its chunk list fits a message
_SHA256 = re.compile(r"[0-9a-f]{64}")  # chunk names from a worker become file names in the store
DEFAULT_DIR = "checkpoint"
TEMP_SUFFIXES = (".tmp", ".part", ".partial", "~")
FRAME_TIMEOUT = 30.0

Signature = dict[str, tuple[int, int, int]]  # relpath -> (size, mtime_ns, inode)


def is_temporary(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") or name.endswith(TEMP_SUFFIXES)


def normalize(paths: list[str] | None) -> list[str]:
    """The declared checkpoint paths, checked and without duplicates; `checkpoint` always first."""
    out = [DEFAULT_DIR]
    seen = {DEFAULT_DIR}
    for p in paths or []:
        if not isinstance(p, str):
            raise ManifestError("checkpoint paths must be strings")
        rel = p.strip().rstrip("/")
        if rel.startswith("./"):
            rel = rel[2:]
        try:
            files.check_relpath(rel)
        except ManifestError as e:
            raise ManifestError(f"checkpoint path {p!r}: {e} (it must be inside the job directory)") from None
        if rel not in seen:
            if len(out) == MAX_PATHS:
                raise ManifestError(f"a job may declare at most {MAX_PATHS - 1} checkpoint paths besides"
                                    f" {DEFAULT_DIR}/ (put them under one directory)")
            seen.add(rel)
            out.append(rel)
    return out


def under(rel: str, prefixes: list[str]) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in prefixes)


@dataclass
class CkptFile:
    path: str
    mode: int
    size: int
    sha256: str
    chunks: list[str]

    def to_dict(self) -> dict:
        return {"path": self.path, "mode": self.mode, "size": self.size, "sha256": self.sha256,
                "chunks": self.chunks}


def parse_manifest(raw) -> list[CkptFile]:
    """A checkpoint manifest from a peer, checked like any file list."""
    if not isinstance(raw, list) or len(raw) > MAX_FILES:
        raise ProtocolError("checkpoint: bad file list")
    out = []
    seen = set()
    for d in raw:
        if not isinstance(d, dict):
            raise ProtocolError("checkpoint: bad file entry")
        entry = files.validate_manifest([{k: d.get(k) for k in ("path", "mode", "size", "sha256")}])[0]
        chunks = d.get("chunks")
        want = -(-entry.size // CHUNK)
        if (not isinstance(chunks, list) or len(chunks) != want
                or not all(isinstance(c, str) and _SHA256.fullmatch(c) for c in chunks)):  # a chunk is a file name here
            raise ProtocolError(f"checkpoint: bad chunk list for {entry.path!r}")
        if entry.path in seen:
            raise ProtocolError(f"checkpoint: {entry.path!r} listed twice")
        seen.add(entry.path)
        out.append(CkptFile(entry.path, entry.mode, entry.size, entry.sha256, list(chunks)))
    if sum(f.size for f in out) > MAX_BYTES:  # one chunk sent 9000 times in the list is 9 GiB written
        raise ProtocolError(f"checkpoint: more than {MAX_BYTES >> 30} GiB")
    return out


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
