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
before it is taken and while it is read. A job that writes into a temporary name and renames it
into place (what torch.save + os.replace, Keras and most trainers do) can
never have half a file taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from homie import files
from homie.errors import HomieError, ManifestError, ProtocolError
from homie.worker import jobdir

CHUNK = 1 << 20  # the unit of change: a 200 MB checkpoint with 1 MB changed sends about 1 MB
SETTLE = 0.25  # seconds a checkpoint must stay unchanged, just before it is taken
MAX_FILES = 256  # descriptors one snapshot may hold open (a daemon may run many jobs)
MAX_BYTES = 8 << 30  # read whole at every change (a sparse file costs the job nothing); its chunk list fits a message
DEFAULT_DIR = "checkpoint"
TEMP_SUFFIXES = (".tmp", ".part", ".partial", "~")
FRAME_TIMEOUT = 30.0
_SHA256 = re.compile(r"[0-9a-f]{64}")  # chunk names from a worker become file names in the store

Signature = dict[str, tuple[int, int, int]]  # relpath -> (size, mtime_ns, inode)


def is_temporary(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name.startswith(".") or name.endswith(TEMP_SUFFIXES)


def normalize(paths: list[str] | None) -> list[str]:
    """The declared checkpoint paths, checked and without duplicates; `checkpoint` always first."""
    out = [DEFAULT_DIR]
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
        if rel not in out:
            out.append(rel)
    return out


def under(rel: str, prefixes: list[str]) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in prefixes)


# -- the worker side ------------------------------------------------------------------


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


class Snapshot:
    """One complete checkpoint, held by open descriptors until the next replaces it."""

    def __init__(self, seq: int, at: float, files_: list[CkptFile], fds: dict[str, int]):
        self.seq = seq
        self.at = at
        self.files = files_
        self._fds = fds
        self._where: dict[str, tuple[str, int, int]] = {}  # chunk sha -> (path, offset, length)
        for f in files_:
            for i, sha in enumerate(f.chunks):
                self._where.setdefault(sha, (f.path, i * CHUNK, min(CHUNK, f.size - i * CHUNK)))
        self._lock = threading.Lock()
        self._users = 0
        self._closing = False

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def manifest(self) -> list[dict]:
        return [f.to_dict() for f in self.files]

    def has_chunk(self, sha: str) -> bool:
        return sha in self._where

    def read_chunk(self, sha: str) -> bytes:
        """The chunk's bytes, re-checked: a job that rewrote a file in place
        (instead of renaming a new one over it) changed the snapshot."""
        path, offset, length = self._where[sha]
        data = os.pread(self._fds[path], length, offset)
        if len(data) != length or hashlib.sha256(data).hexdigest() != sha:
            raise HomieError(f"checkpoint file {path} changed while it was being sent (write a new file and"
                             " rename it into place instead of rewriting it)")
        return data

    def __enter__(self) -> Snapshot:
        with self._lock:
            if self._closing:
                raise HomieError("that checkpoint was replaced by a newer one")
            self._users += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._users -= 1
            last = self._closing and self._users == 0
        if last:
            self._close_fds()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            idle = self._users == 0
        if idle:
            self._close_fds()

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass


def signature(root: Path, prefixes: list[str]) -> Signature:
    """The checkpoint files under root as they are now (walked by descriptor, links never followed)."""
    def keep(rel: str, is_dir: bool) -> bool:  # only the checkpoint paths are walked, not the whole job directory
        return under(rel, prefixes) or (is_dir and any(p.startswith(rel + "/") for p in prefixes))

    try:
        found = jobdir.scan(root, keep, limit=4 * MAX_FILES)
    except jobdir.TooMany:
        raise HomieError(f"a checkpoint of more than {MAX_FILES} files is not supported") from None
    return {rel: sig for rel, sig in found.items() if not is_temporary(rel) and sendable(rel)}


def sendable(rel: str) -> bool:
    """A name no manifest takes (a newline, invalid UTF-8) is left out, not the whole checkpoint with it."""
    try:
        files.check_relpath(rel)
    except ManifestError:
        return False
    return True


def take(root: Path, sig: Signature, seq: int, at: float) -> Snapshot | None:
    """Open and hash every file of sig; None if any changed on the way (it is taken later)."""
    fds: dict[str, int] = {}
    out: list[CkptFile] = []
    try:
        for rel in sorted(sig):
            fd = jobdir.open_beneath(root, rel)
            fds[rel] = fd
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns, st.st_ino) != sig[rel]:
                raise _Changed
        for rel in sorted(sig):
            fd = fds[rel]
            whole = hashlib.sha256()
            chunks = []
            offset = 0
            size = sig[rel][0]
            while offset < size:
                data = os.pread(fd, min(CHUNK, size - offset), offset)
                if not data:
                    raise _Changed
                whole.update(data)
                chunks.append(hashlib.sha256(data).hexdigest())
                offset += len(data)
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != sig[rel][:2]:
                raise _Changed
            mode = 0o755 if st.st_mode & 0o100 else 0o644
            out.append(CkptFile(rel, mode, size, whole.hexdigest(), chunks))
    except (_Changed, OSError, ManifestError):
        for fd in fds.values():
            os.close(fd)
        return None
    return Snapshot(seq, at, out, fds)


class _Changed(Exception):
    pass


class Watcher:
    """Decides when a running job's checkpoint paths hold a new checkpoint to take.

    poll() is called about every second by the worker; the clock is injectable
    so the policy (settle, interval) is tested without sleeping."""

    def __init__(self, root: Path, paths: list[str], interval: float,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 scan: Callable[[Path, list[str]], Signature] = signature,
                 taker: Callable[..., Snapshot | None] = take, sleep: Callable[[float], None] = time.sleep):
        self.root = root
        self.paths = paths
        self.interval = interval
        self._clock = clock
        self._wall = wall
        self._scan = scan
        self._take = taker
        self._sleep = sleep
        self._taken: Signature | None = None
        self._taken_at: float | None = None
        self.snapshot: Snapshot | None = None
        self.seq = 0
        self._closed = False
        self.lock = threading.Lock()
        self._poll_lock = threading.Lock()  # the lending loop and the job's end may both poll

    def prime(self) -> None:
        """What the paths hold now (a restored checkpoint) does not count as new."""
        with self._poll_lock:
            try:
                self._taken = self._scan(self.root, self.paths) or None
            except HomieError:
                self._taken = None  # too many files: poll() says so

    def poll(self, final: bool = False) -> bool:
        """Take a new snapshot if one is due; True if it did. final: the job's
        processes are gone (it exited or was evicted), so nothing can change
        any more: no settling, no interval."""
        with self._poll_lock:
            return self._poll(final)

    def _poll(self, final: bool) -> bool:
        now = self._clock()
        sig = self._scan(self.root, self.paths)
        if len(sig) > MAX_FILES:
            raise HomieError(f"a checkpoint of more than {MAX_FILES} files is not supported")
        if sum(s[0] for s in sig.values()) > MAX_BYTES:
            raise HomieError(f"a checkpoint of more than {MAX_BYTES >> 30} GiB is not supported")
        if not sig or sig == self._taken:
            return False
        if not final:
            if self._taken_at is not None and now - self._taken_at < self.interval:
                return False
            # Still being written (several files, or one rewritten in place)? Then at the next poll.
            self._sleep(SETTLE)
            if self._scan(self.root, self.paths) != sig:
                return False
        snap = self._take(self.root, sig, self.seq + 1, self._wall())
        if snap is None:
            return False  # it moved while being read
        with self.lock:
            if self._closed:  # the job was dropped while this one was being read
                snap.close()
                return False
            old, self.snapshot = self.snapshot, snap
            self.seq = snap.seq
        if old is not None:
            old.close()
        self._taken, self._taken_at = sig, now
        return True

    def close(self) -> None:
        with self.lock:
            self._closed = True
            snap, self.snapshot = self.snapshot, None
        if snap is not None:
            snap.close()


def serve(ch, job_id: str, snap: Snapshot | None) -> None:
    """The worker's side of a `ckpt_fetch`: the manifest, then the chunks asked for."""
    if snap is None:
        ch.send("error", message=f"job {job_id} has no checkpoint yet", code="no_checkpoint")
        return
    try:
        with snap:
            ch.send("ckpt", job_id=job_id, seq=snap.seq, at=snap.at, files=snap.manifest())
            want = ch.recv_msg("ckpt_want", timeout=FRAME_TIMEOUT)["chunks"]
            if len(want) > sum(len(f.chunks) for f in snap.files) or not all(
                    isinstance(s, str) and snap.has_chunk(s) for s in want):
                ch.send("error", message="asked for chunks that are not in the checkpoint", code="bad_request")
                return
            for sha in want:
                try:
                    data = snap.read_chunk(sha)
                except (HomieError, OSError) as e:
                    ch.send("error", message=str(e), code="changed")
                    return
                ch.send("blob", sha256=sha, size=len(data))
                ch.send_data(data)
            ch.send("ckpt_done")
    except HomieError as e:
        ch.send("error", message=str(e), code="no_checkpoint")


# -- the submitter side -----------------------------------------------------------------


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

    def receive(self, seq: int, chunks_in) -> Path:
        """A fresh version directory; chunks_in yields (sha, bytes-iterator) for every missing chunk."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        stage = self.root / f"incoming-{seq}"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "chunks").mkdir(mode=0o700, parents=True)
        for sha, pieces in chunks_in:
            h = hashlib.sha256()
            with open(stage / "chunks" / sha, "wb") as out:
                for piece in pieces:
                    h.update(piece)
                    out.write(piece)
            if h.hexdigest() != sha:
                raise HomieError("a checkpoint chunk arrived corrupted (hash mismatch)")
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


def fetch(ch, job_id: str, auth: dict, store: Store, attempt: int) -> Saved | None:
    """The submitter's side of a `ckpt_fetch` on an open channel: None if the worker has none yet."""
    ch.send("ckpt_fetch", job_id=job_id, **auth)
    msg = ch.recv_msg("ckpt", "error", timeout=FRAME_TIMEOUT)
    if msg.t == "error":
        if msg.get("code") == "no_checkpoint":
            return None
        raise HomieError(f"checkpoint: {msg['message']}")
    new = parse_manifest(msg["files"])
    stray = [f.path for f in new if store.paths is not None and not under(f.path, store.paths)]
    if stray:  # it would replace an input of the next attempt (a module the job imports)
        raise ProtocolError(f"checkpoint: {stray[0]!r} is not under the job's checkpoint paths")
    seq, at = msg["seq"], msg["at"]
    need = store.missing(new)
    ch.send("ckpt_want", chunks=need)
    sizes: dict[str, int] = {}
    for f in new:
        for i, sha in enumerate(f.chunks):
            sizes.setdefault(sha, min(CHUNK, f.size - i * CHUNK))

    def chunks_in():
        for sha in need:
            head = ch.recv_msg("blob", "error", timeout=FRAME_TIMEOUT)
            if head.t == "error":
                raise HomieError(f"checkpoint: {head['message']}")
            if head["sha256"] != sha or head["size"] != sizes[sha]:
                raise ProtocolError("checkpoint chunk does not match its manifest")
            yield sha, _pieces(ch, sizes[sha])

    stage = store.receive(seq, chunks_in())
    try:
        ch.recv_msg("ckpt_done", timeout=FRAME_TIMEOUT)
        return store.commit(stage, seq, at, attempt, new)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _pieces(ch, size: int):
    from homie.wire.protocol import Data

    got = 0
    while got < size:
        ev = ch.recv(timeout=FRAME_TIMEOUT)
        if not isinstance(ev, Data):
            raise ProtocolError("checkpoint chunk cut short")
        got += len(ev.data)
        if got > size:
            raise ProtocolError("checkpoint chunk longer than announced")
        yield bytes(ev.data)


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
