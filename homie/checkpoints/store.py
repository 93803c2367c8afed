"""The submitter side: `Store` keeps the last complete checkpoint of a job and
commits a new version by one atomic rename of its pointer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from homie import files
from homie.checkpoints.rules import CHUNK, CkptFile, parse_manifest
from homie.errors import HomieError, ProtocolError


@dataclass
class Saved:
    """The checkpoint the submitter holds: what `Store.current` returns."""

    seq: int
    at: float
    attempt: int
    files: list[CkptFile] = field(default_factory=list)
    version: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class Store:
    """The last complete checkpoint of one submitted job, under `root`:
    `v<seq>/` holds its files and `manifest.json`, `CURRENT` names the version.
    Only a rename of CURRENT commits a new one."""

    def __init__(self, root: Path, paths: list[str] | None = None):
        self.root = root
        self.paths = paths  # the job's checkpoint paths: all a worker may send home (None: anything)

    def current(self) -> Saved | None:
        try:
            version = (self.root / "CURRENT").read_text().strip()
            doc = json.loads((self.root / version / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        try:
            return Saved(int(doc["seq"]), float(doc["at"]), int(doc.get("attempt", 1)),
                         parse_manifest(doc["files"]), version)
        except (KeyError, TypeError, ValueError, ProtocolError):
            return None

    def cleanup(self) -> None:
        """Drop every version but the committed one (a fetch cut short, a restart mid-commit)."""
        cur = self.current()
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.name != "CURRENT" and (cur is None or p.name != cur.version):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def missing(self, new: list[CkptFile]) -> list[str]:
        """The chunks of `new` that the current checkpoint does not hold, in order, once each."""
        have = self._index(self.current())
        out, seen = [], set()
        for f in new:
            for sha in f.chunks:
                if sha not in have and sha not in seen:
                    seen.add(sha)
                    out.append(sha)
        return out

    def _index(self, cur: Saved | None) -> dict[str, tuple[Path, int, int]]:
        idx: dict[str, tuple[Path, int, int]] = {}
        if cur is None:
            return idx
        base = self.root / cur.version / "files"
        for f in cur.files:
            for i, sha in enumerate(f.chunks):
                idx.setdefault(sha, (base / f.path, i * CHUNK, min(CHUNK, f.size - i * CHUNK)))
        return idx

    def stage(self, seq: int) -> Path:
        """A fresh staging directory for version seq; received chunks go in its `chunks/`."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        stage = self.root / f"incoming-{seq}"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "chunks").mkdir(mode=0o700, parents=True)
        return stage

    def commit(self, stage: Path, seq: int, at: float, attempt: int, new: list[CkptFile]) -> Saved:
        """Assemble the new version from the old one and the received chunks, check it, make it current."""
        have = self._index(self.current())
        (stage / "files").mkdir(mode=0o700)
        writer = files.SafeWriter(stage / "files")
        for f in new:
            h = hashlib.sha256()
            with writer.open_new(f.path, f.mode) as out:
                for sha in f.chunks:
                    got = stage / "chunks" / sha
                    if got.exists():
                        data = got.read_bytes()
                    else:
                        path, offset, length = have[sha]
                        with open(path, "rb") as src:
                            src.seek(offset)
                            data = src.read(length)
                    if hashlib.sha256(data).hexdigest() != sha:
                        raise HomieError(f"checkpoint file {f.path} could not be rebuilt (chunk mismatch)")
                    h.update(data)
                    out.write(data)
            if h.hexdigest() != f.sha256:
                raise HomieError(f"checkpoint file {f.path} arrived corrupted (hash mismatch)")
        shutil.rmtree(stage / "chunks", ignore_errors=True)
        doc = {"seq": seq, "at": at, "attempt": attempt, "files": [f.to_dict() for f in new]}
        files.atomic_write(stage / "manifest.json", json.dumps(doc).encode())
        version = f"v{attempt}-{seq}"
        os.rename(stage, self.root / version)
        files.atomic_write(self.root / "CURRENT", version.encode())
        self.cleanup()
        return Saved(seq, at, attempt, new, version)

    def entries(self) -> list[tuple[files.FileEntry, Path]]:
        """The current checkpoint as job inputs: what a new attempt starts from."""
        cur = self.current()
        if cur is None:
            return []
        base = self.root / cur.version / "files"
        return [(files.FileEntry(f.path, f.mode, f.size, f.sha256), base / f.path) for f in cur.files]

