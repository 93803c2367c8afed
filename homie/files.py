"""Moving job files safely: manifests, hostile-name checks, safe writes, caches.

Design (docs: design-notes section 4 "Moving files"):

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

Only the standard library is imported at module load; pathspec is imported when
a directory is actually walked so that ``homie peers`` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import sqlite3
import stat
import tempfile
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from homie.errors import HomieError, ManifestError

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
    "DEFAULT_SKIP_DIRS",
    "RESERVED_DIR",
    "MODE_FILE",
    "MODE_EXEC",
]

GiB = 1 << 30
MiB = 1 << 20

# Only the exec bit is carried: other bits (setuid, group/other write) are
# either dangerous on the receiving side or meaningless across machines.
MODE_FILE = 0o644
MODE_EXEC = 0o755
_MODES = (MODE_FILE, MODE_EXEC)

# The job directory's ".homie" is homie's own (logs, the job's env file, ...):
# a manifest may not write into it and results never include it.
RESERVED_DIR = ".homie"

# Skipped at any depth when a directory is sent. Kept deliberately small so
# that nothing surprising is dropped; everything else goes in .homieignore.
DEFAULT_SKIP_DIRS = frozenset({".git", ".venv", "__pycache__"})

_HEX = frozenset("0123456789abcdef")
_FIELDS = {"path": str, "mode": int, "size": int, "sha256": str}
_CHUNK = MiB


# --------------------------------------------------------------------------
# Manifest entries and validation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    path: str  # posix relative path, already validated
    mode: int  # MODE_FILE or MODE_EXEC
    size: int
    sha256: str  # 64 lowercase hex digits

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "mode": self.mode, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Any) -> FileEntry:
        """Build one entry from untrusted data, with the same checks as a manifest."""
        return validate_manifest([d])[0]


def _show(s: str, limit: int = 80) -> str:
    # repr() escapes control characters, so a hostile name cannot break the
    # one-line error message or a terminal.
    return repr(s if len(s) <= limit else s[:limit] + "...")


def _fold(component: str) -> str:
    # Canonical caseless matching (Unicode ch. 3.13): NFC before casefold so
    # that composed and decomposed forms agree, NFC after because casefold can
    # denormalise. Matches what case-insensitive / normalising filesystems
    # (APFS, HFS+, NTFS, SMB shares) would consider the same name.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", component).casefold())


def check_relpath(path: Any, *, max_name_len: int = 255, max_path_len: int = 1024) -> str:
    """Check one relative path from an untrusted source; return it unchanged.

    Lengths are in UTF-8 bytes because that is what the filesystem limits
    (NAME_MAX, PATH_MAX) count.
    """
    if not isinstance(path, str):
        raise ManifestError(f"path must be a string, not {type(path).__name__}")
    if not path:
        raise ManifestError("empty path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: valid in JSON, impossible to create on disk.
        raise ManifestError(f"path {_show(path)} is not valid Unicode") from None
    if len(encoded) > max_path_len:
        raise ManifestError(f"path {_show(path)} is longer than {max_path_len} bytes")
    if path.startswith("/"):
        raise ManifestError(f"absolute path {_show(path)}")
    if "\\" in path:
        raise ManifestError(f"backslash in path {_show(path)}")
    for ch in path:
        # Category Cc: C0 controls, DEL and the C1 controls. NUL would
        # truncate the name in the OS; the rest are terminal and log hazards.
        if ch < " " or unicodedata.category(ch) == "Cc":
            raise ManifestError(f"control character in path {_show(path)}")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ManifestError(f"path {_show(path)} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > max_name_len:
            raise ManifestError(f"name {_show(part)} in path {_show(path)} is longer than {max_name_len} bytes")
    if _fold(parts[0]) == RESERVED_DIR:
        raise ManifestError(f"path {_show(path)} is inside {RESERVED_DIR!r}, which is reserved for homie")
    return path


def validate_manifest(
    raw: Any,
    *,
    max_files: int = 20000,
    max_total_bytes: int = 64 * GiB,
    max_name_len: int = 255,
    max_path_len: int = 1024,
) -> list[FileEntry]:
    """Validate a manifest received from the network; return entries sorted by path.

    Raises only ManifestError, whatever ``raw`` is.
    """
    if not isinstance(raw, list):
        raise ManifestError(f"manifest must be a list, not {type(raw).__name__}")
    # Before looking at any entry: a huge list is refused in O(1).
    if len(raw) > max_files:
        raise ManifestError(f"manifest has {len(raw)} files, more than the limit of {max_files}")
    entries: list[FileEntry] = []
    total = 0
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ManifestError(f"manifest entry {i} must be an object, not {type(item).__name__}")
        if set(item) != set(_FIELDS):
            missing = sorted(set(_FIELDS) - set(item))
            extra = sorted(repr(k)[:40] for k in set(item) - set(_FIELDS))
            what = f"missing {', '.join(missing)}" if missing else f"unknown field {', '.join(extra)}"
            raise ManifestError(f"manifest entry {i}: {what}")
        for name, typ in _FIELDS.items():
            # bool is an int subclass; JSON true must not pass as size 1.
            if not isinstance(item[name], typ) or isinstance(item[name], bool):
                raise ManifestError(f"manifest entry {i}: {name} must be {typ.__name__}")
        path = check_relpath(item["path"], max_name_len=max_name_len, max_path_len=max_path_len)
        mode, size, sha = item["mode"], item["size"], item["sha256"]
        if mode not in _MODES:
            raise ManifestError(f"{_show(path)}: mode must be 0o644 or 0o755")
        if size < 0:
            raise ManifestError(f"{_show(path)}: negative size")
        if len(sha) != 64 or not _HEX.issuperset(sha):
            raise ManifestError(f"{_show(path)}: sha256 must be 64 lowercase hex digits")
        total += size
        if total > max_total_bytes:
            raise ManifestError(f"manifest totals more than the limit of {max_total_bytes} bytes")
        entries.append(FileEntry(path, mode, size, sha))
    _check_collisions(e.path for e in entries)
    entries.sort(key=lambda e: e.path)
    return entries


def _check_collisions(paths: Iterable[str]) -> None:
    """Refuse duplicates, case/normalisation twins, and a file that is also a directory."""
    files: dict[tuple[str, ...], str] = {}
    dirs: dict[tuple[str, ...], str] = {}  # folded prefix -> first path seen under it
    for path in paths:
        key = tuple(_fold(p) for p in path.split("/"))
        other = files.get(key)
        if other is not None:
            if other == path:
                raise ManifestError(f"duplicate path {_show(path)}")
            raise ManifestError(
                f"paths {_show(other)} and {_show(path)} collide (same name ignoring case/normalisation)"
            )
        if key in dirs:
            raise ManifestError(f"{_show(path)} is both a file and a directory (see {_show(dirs[key])})")
        files[key] = path
        parts = path.split("/")
        for n in range(1, len(key)):
            prefix = key[:n]
            if prefix in files:
                raise ManifestError(f"{_show(files[prefix])} is both a file and a directory (see {_show(path)})")
            seen = dirs.setdefault(prefix, path)
            # "A/x" and "a/y": one directory on macOS, two on Linux.
            if seen.split("/")[:n] != parts[:n]:
                raise ManifestError(
                    f"paths {_show(seen)} and {_show(path)} collide (same directory name ignoring case/normalisation)"
                )


# --------------------------------------------------------------------------
# Writing files under a root without following symlinks
# --------------------------------------------------------------------------

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
# What open(O_NOFOLLOW) reports for a symlink: ELOOP on Linux/macOS, EMLINK on
# FreeBSD, ENOTDIR when a component is a plain file.
_SYMLINK_ERRNOS = {errno.ELOOP, errno.EMLINK, errno.ENOTDIR}
# os.link failures that mean "this filesystem/situation can't hardlink": copy.
_NO_LINK_ERRNOS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP}


class SafeWriter:
    """Creates new files under ``root`` and never anywhere else.

    Each path is re-checked with :func:`check_relpath`, then walked one
    component at a time relative to an open directory fd, so a symlink
    (planted before or during the write) makes the write fail instead of
    escaping the root. Existing files are never overwritten (O_EXCL).
    """

    def __init__(self, root: str | os.PathLike, *, max_name_len: int = 255, max_path_len: int = 1024):
        self.root = Path(root)
        self._limits = {"max_name_len": max_name_len, "max_path_len": max_path_len}
        if not self.root.is_dir():
            raise HomieError(f"job directory {self.root} does not exist")

    def _open_parent(self, relpath: str) -> tuple[int, str]:
        """Return (fd of the parent directory, final name); the caller closes the fd."""
        check_relpath(relpath, **self._limits)
        *dirs, name = relpath.split("/")
        # The root itself is homie's own directory and may sit behind a
        # trusted symlink (/tmp -> /private/tmp on macOS), so it is followed.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        try:
            for part in dirs:
                nfd = self._enter(fd, part, relpath)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    @staticmethod
    def _enter(fd: int, part: str, relpath: str) -> int:
        for _ in range(2):
            try:
                return os.open(part, _O_DIR, dir_fd=fd)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass  # created concurrently; the next open() checks what it is
            except OSError as e:
                if e.errno in _SYMLINK_ERRNOS:
                    raise ManifestError(
                        f"refusing to write {_show(relpath)}: {_show(part)} is a symlink or not a directory"
                    ) from None
                raise
        # Still missing right after mkdir: something is racing us; don't loop.
        raise ManifestError(f"refusing to write {_show(relpath)}: {_show(part)} keeps changing")

    def open_new(self, relpath: str, mode: int = MODE_FILE) -> IO[bytes]:
        """Create ``root/relpath`` (which must not exist) and return it open for writing."""
        if mode not in _MODES:
            raise ManifestError(f"{_show(relpath)}: mode must be 0o644 or 0o755")
        dfd, name = self._open_parent(relpath)
        try:
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=dfd)
            except FileExistsError:
                # O_EXCL also fails on a dangling symlink, which is the point.
                raise ManifestError(f"refusing to write {_show(relpath)}: it already exists") from None
            except OSError as e:
                if e.errno in _SYMLINK_ERRNOS:
                    raise ManifestError(f"refusing to write {_show(relpath)}: not a regular file") from None
                raise
        finally:
            os.close(dfd)
        try:
            # The umask must not strip the exec bit we were asked to carry.
            os.fchmod(fd, mode)
            return os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise

    def link_or_copy_new(
        self, src_path: str | os.PathLike, relpath: str, mode: int = MODE_FILE, *, link: bool = True
    ) -> bool:
        """Materialise ``src_path`` (a cached blob) at ``root/relpath``; True if hardlinked.

        A hardlink shares the blob's inode, so the file is read-only (0o444)
        and a job running as the same user could still chmod it and modify
        the cached blob in place; pass ``link=False`` where jobs are not
        trusted that far. Executables are always copied: the exec bit lives
        on the inode and cannot differ between links.
        """
        if mode not in _MODES:
            raise ManifestError(f"{_show(relpath)}: mode must be 0o644 or 0o755")
        if link and mode == MODE_FILE:
            dfd, name = self._open_parent(relpath)
            try:
                os.link(src_path, name, dst_dir_fd=dfd, follow_symlinks=False)
                return True
            except FileExistsError:
                raise ManifestError(f"refusing to write {_show(relpath)}: it already exists") from None
            except OSError as e:
                if e.errno not in _NO_LINK_ERRNOS:
                    raise
            finally:
                os.close(dfd)
        with open(src_path, "rb") as src, self.open_new(relpath, mode) as dst:
            _copy_fd(src.fileno(), dst.fileno())
        return False


def _copy_fd(src: int, dst: int) -> None:
    # copy_file_range keeps data in the kernel (and reflinks on btrfs/xfs).
    cfr = getattr(os, "copy_file_range", None)
    if cfr is not None:
        try:
            while cfr(src, dst, 64 * MiB):
                pass
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            # Fall through: nothing was written if it failed on the first call,
            # and on later calls both offsets moved together.
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = os.readv(src, [buf])
        if not n:
            return
        off = 0
        while off < n:
            off += os.write(dst, view[off:n])


# --------------------------------------------------------------------------
# Worker side: content-addressed blob cache
# --------------------------------------------------------------------------


def _check_sha(sha: Any) -> str:
    # Also what keeps a hash from being a path: "../../x" fails here.
    if not isinstance(sha, str) or len(sha) != 64 or not _HEX.issuperset(sha):
        raise ManifestError(f"invalid sha256 {_show(str(sha))}")
    return sha


class BlobCache:
    """Files by sha256 under ``dir/ab/abcdef...``, read-only, LRU-evicted to ``max_bytes``.

    Recency is the blob's *atime*, set explicitly by :meth:`touch`, not its
    mtime: blobs are hardlinked into job directories, and bumping the shared
    inode's mtime would make another running job report its input as a
    result file. The in-memory index is built by one scan at start.
    """

    def __init__(self, dir: str | os.PathLike, max_bytes: int, *, fsync: bool = True):
        self.dir = Path(dir)
        self.max_bytes = max_bytes
        # fsync before the rename: after a power cut a blob must be whole or
        # absent, since a truncated one would be served to every later job.
        self.fsync = fsync
        self._lock = threading.Lock()
        self._index: dict[str, list[int]] = {}  # sha -> [size, recency ns]
        self._pins: dict[str, int] = {}  # sha -> number of running jobs using it
        self._total = 0
        self._tmp = self.dir / "tmp"
        old = os.umask(0o077)
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
        self._scan()

    def _scan(self) -> None:
        # Leftovers of a crash mid-upload are never valid blobs.
        for entry in os.scandir(self._tmp):
            try:
                os.unlink(entry.path)
            except OSError:
                pass
        for sub in os.scandir(self.dir):
            if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                name = entry.name
                if len(name) != 64 or not _HEX.issuperset(name) or name[:2] != sub.name:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    self._index[name] = [st.st_size, st.st_atime_ns]
                    self._total += st.st_size

    def path(self, sha: str) -> Path:
        _check_sha(sha)
        return self.dir / sha[:2] / sha

    def has(self, sha: str) -> bool:
        p = self.path(sha)
        with self._lock:
            if sha not in self._index:
                return False
            if p.exists():
                return True
            # Deleted behind our back (a user cleaning ~/.homie): forget it.
            self._total -= self._index.pop(sha)[0]
            return False

    def touch(self, sha: str) -> None:
        p = self.path(sha)
        now = time.time_ns()
        with self._lock:
            if sha in self._index:
                self._index[sha][1] = now
        try:
            st = os.stat(p)
            # atime only; see the class docstring for why mtime is left alone.
            os.utime(p, ns=(now, st.st_mtime_ns))
        except OSError:
            pass  # recency survives in memory; on disk it only matters after a restart

    @contextlib.contextmanager
    def pinned(self, shas: Iterable[str]) -> Iterator[None]:
        """Protect blobs from :meth:`evict` while a job uses them, whichever thread evicts."""
        shas = [_check_sha(s) for s in set(shas)]
        with self._lock:
            for s in shas:
                self._pins[s] = self._pins.get(s, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for s in shas:
                    n = self._pins.pop(s) - 1
                    if n:
                        self._pins[s] = n

    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove least recently used blobs until the total fits; return the removed hashes.

        Blobs in ``keep`` or :meth:`pinned` are never removed, so the total
        may stay above the cap while they are in use.
        """
        keep = set(keep)
        removed: list[str] = []
        with self._lock:
            if self._total <= self.max_bytes:
                return removed
            for sha, (size, _) in sorted(self._index.items(), key=lambda kv: kv[1][1]):
                if self._total <= self.max_bytes:
                    break
                if sha in keep or sha in self._pins:
                    continue
                try:
                    os.unlink(self.dir / sha[:2] / sha)
                except FileNotFoundError:
                    pass
                del self._index[sha]
                self._total -= size
                removed.append(sha)
        return removed

    def discard(self, sha: str) -> None:
        """Forget a blob whose content can no longer be trusted (a job wrote into its hard link)."""
        p = self.path(sha)
        with self._lock:
            entry = self._index.pop(sha, None)
            if entry is not None:
                self._total -= entry[0]
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass

    def writer(self, sha: str, size: int) -> BlobWriter:
        _check_sha(sha)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"invalid size {size!r} for blob {sha[:12]}")
        return BlobWriter(self, sha, size)

    def _commit(self, tmp: str, sha: str, size: int) -> None:
        final = self.path(sha)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        # rename is atomic: readers see no blob or the whole verified blob.
        # Replacing an identical blob written concurrently is harmless.
        os.replace(tmp, final)
        with self._lock:
            old = self._index.get(sha)
            if old is not None:
                self._total -= old[0]
            self._index[sha] = [size, time.time_ns()]
            self._total += size


class BlobWriter:
    """Streams one blob to a temp file; :meth:`commit` verifies size and hash.

    As a context manager it commits on a clean exit and discards on an
    exception, so a failed upload never leaves anything under the final name.
    """

    def __init__(self, cache: BlobCache, sha: str, size: int):
        self.sha = sha
        self.size = size
        self.written = 0
        self._cache = cache
        self._hash = hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=cache._tmp, prefix=sha[:12] + ".")
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self.state = "open"  # -> "committed" | "aborted"
        self._hashed_apart = False

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.state != "open":
            raise ManifestError(f"blob {self.sha[:12]} is already {self.state}")
        n = len(chunk)
        if self.written + n > self.size:
            # Fail at once: a lying size must not let a sender fill the disk.
            self.abort()
            raise ManifestError(
                f"blob {self.sha[:12]}: more bytes than the declared size {self.size}; content does not match its hash"
            )
        assert self._file is not None  # open until commit or abort
        self._file.write(chunk)
        if not self._hashed_apart:
            self._hash.update(chunk)
        self.written += n

    def hash_apart(self, chunk: bytes | bytearray | memoryview) -> None:
        """Hash a chunk here and write() it elsewhere (another thread, same
        order): receiving, hashing and writing then overlap on two cores."""
        self._hashed_apart = True
        self._hash.update(chunk)

    def commit(self) -> None:
        if self.state == "committed":
            return
        if self.state == "aborted":
            # Never let a caller that swallowed a write error think it stored the blob.
            raise ManifestError(f"blob {self.sha[:12]} was aborted; content does not match its hash")
        try:
            if self.written != self.size or self._hash.hexdigest() != self.sha:
                raise ManifestError(
                    f"blob {self.sha[:12]}: content does not match its hash or size "
                    f"({self.written} bytes received, {self.size} declared)"
                )
            assert self._file is not None  # open until commit or abort
            self._file.flush()
            os.fchmod(self._file.fileno(), 0o444)
            if self._cache.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._cache._commit(self._tmp, self.sha, self.size)
            self.state = "committed"
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self.state != "open":
            return
        self.state = "aborted"
        if self._file is not None:
            self._file.close()
            self._file = None
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


# --------------------------------------------------------------------------
# Submitter side: hash cache
# --------------------------------------------------------------------------

# A file modified within this long of being hashed may change again without
# its mtime moving (coarse timestamps: 2 s on FAT, 1 s on ext3/HFS+, a kernel
# tick elsewhere), so its hash is not remembered: git's "racily clean" rule.
_RACY_NS = 2_000_000_000


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    # ctime cannot be set by tools that preserve mtime (cp -p, rsync -t, tar x).
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class HashCache:
    """sha256 of local files, remembered in sqlite by (realpath, size, mtime, ctime, inode, device)."""

    def __init__(self, db_path: str | os.PathLike):
        self.db_path = Path(db_path)
        self.hashed = 0  # files actually read (for tests and stats)
        self.bytes_hashed = 0
        self._lock = threading.Lock()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError:
            # It is only a cache: a corrupt or foreign file costs a re-hash,
            # never a failed `homie run`.
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(f"{self.db_path}{suffix}")
                except FileNotFoundError:
                    pass
            self._db = self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # Losing the last few entries after a power cut only costs a re-hash.
            db.execute("PRAGMA synchronous=NORMAL")
            # Paths are bytes: Linux file names need not be valid UTF-8.
            db.execute(
                "CREATE TABLE IF NOT EXISTS hashes (path BLOB PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                " ctime_ns INTEGER, ino INTEGER, dev INTEGER, sha256 TEXT NOT NULL)"
            )
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> HashCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sha256_of(self, path: str | os.PathLike) -> tuple[int, str]:
        real = os.path.realpath(path)
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise HomieError(f"not a regular file: {path}")
        key = _stat_key(st)
        with self._lock:
            row = self._db.execute(
                "SELECT size, mtime_ns, ctime_ns, ino, dev, sha256 FROM hashes WHERE path = ?", (os.fsencode(real),)
            ).fetchone()
        if row is not None and tuple(row[:5]) == key:
            return key[0], row[5]
        size, sha, st = self._hash_stable(real)
        # Only mtime needs to be old: any later write moves mtime to "now",
        # and a tool that puts mtime back still moves ctime (part of the key).
        if time.time_ns() - st.st_mtime_ns > _RACY_NS:
            with self._lock:
                self._db.execute(
                    "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (os.fsencode(real), *_stat_key(st), sha),
                )
        return size, sha

    def _hash_stable(self, real: str, tries: int = 3) -> tuple[int, str, os.stat_result]:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        for _ in range(tries):
            with open(real, "rb", buffering=0) as f:
                before = os.fstat(f.fileno())
                h = hashlib.sha256()
                n_total = 0
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    h.update(view[:n])
                    n_total += n
                after = os.fstat(f.fileno())
            with self._lock:
                self.hashed += 1
                self.bytes_hashed += n_total
            if _stat_key(before) == _stat_key(after) and n_total == after.st_size:
                return n_total, h.hexdigest(), after
        raise ManifestError(f"file changed while reading: {real}")


# --------------------------------------------------------------------------
# Choosing what to send
# --------------------------------------------------------------------------


class Collected(NamedTuple):
    files: list[tuple[str, Path]]  # (relative posix path, absolute path to read), sorted
    warnings: list[str]  # things skipped that the user may want to know about


def _is_inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _rel_to(path: str, root: str) -> str | None:
    """path relative to root (posix) if inside it, lexically or after resolving links."""
    for p, r in ((os.path.abspath(path), os.path.abspath(root)), (os.path.realpath(path), os.path.realpath(root))):
        if _is_inside(p, r) and p != r:
            return Path(os.path.relpath(p, r)).as_posix()
    return None


def _spec(lines: Iterable[str]):
    import pathspec  # only when a directory is walked: keeps CLI start-up light

    return pathspec.GitIgnoreSpec.from_lines(list(lines))


def _decide(spec, rel: str) -> bool | None:
    """True: ignored, False: explicitly re-included, None: no rule matched."""
    check = getattr(spec, "check_file", None)
    if check is not None:
        return check(rel).include
    for pattern in reversed(spec.patterns):  # pathspec < 0.12: last match wins
        if pattern.include is not None and pattern.match_file(rel) is not None:
            return pattern.include
    return None


def _read_ignore(path: str, warnings: list[str]) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return None
    except OSError as e:
        warnings.append(f"could not read {path}: {e.strerror}")
        return None


def _walk_dir(root: str, extra_ignore: Sequence[str], warnings: list[str]) -> list[tuple[str, Path]]:
    real_root = os.path.realpath(root)
    # Priority: extra patterns (command line / config) > .homieignore > the
    # nearest .gitignore. .homieignore can therefore re-include data files
    # that git ignores ("!data/*.csv"), which is the usual reason to have one.
    top: list = []
    if extra_ignore:
        top.append(_spec(extra_ignore))
    homie_lines = _read_ignore(os.path.join(root, ".homieignore"), warnings)
    if homie_lines:
        top.append(_spec(homie_lines))

    def ignored(rel: str, gitspecs: list[tuple[str, Any]], is_dir: bool) -> bool:
        probe = rel + "/" if is_dir else rel
        for spec in top:
            d = _decide(spec, probe)
            if d is not None:
                return d
        for base, spec in reversed(gitspecs):  # deepest .gitignore first
            d = _decide(spec, probe[len(base) + 1 :] if base else probe)
            if d is not None:
                return d
        return False

    out: list[tuple[str, Path]] = []
    stack: list[tuple[str, list[tuple[str, Any]]]] = [("", [])]
    while stack:
        rel_dir, gitspecs = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        lines = _read_ignore(os.path.join(abs_dir, ".gitignore"), warnings)
        if lines:
            gitspecs = gitspecs + [(rel_dir, _spec(lines))]
        try:
            entries = sorted(os.scandir(abs_dir), key=lambda e: e.name)
        except OSError as e:
            warnings.append(f"skipped unreadable directory {abs_dir}: {e.strerror}")
            continue
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            # By name whatever the type: a submodule's .git is a file, and a
            # .venv is often a symlink.
            if entry.name in DEFAULT_SKIP_DIRS or (not rel_dir and entry.name == RESERVED_DIR):
                continue
            if is_dir:
                if not ignored(rel, gitspecs, True):
                    stack.append((rel, gitspecs))
                continue
            if ignored(rel, gitspecs, False):
                continue
            if is_link:
                target = os.path.realpath(entry.path)
                if not _is_inside(target, real_root):
                    warnings.append(f"skipped symlink {rel}: it points outside {root}")
                elif os.path.isdir(target):
                    warnings.append(f"skipped symlink {rel}: it points to a directory")
                elif not os.path.isfile(target):
                    warnings.append(f"skipped symlink {rel}: its target is missing or not a regular file")
                else:
                    out.append((rel, Path(target)))
                continue
            try:
                regular = entry.is_file(follow_symlinks=False)
            except OSError:
                regular = False
            if not regular:
                # FIFOs would block the reader forever; sockets and devices make no sense remotely.
                warnings.append(f"skipped {rel}: not a regular file")
                continue
            out.append((rel, Path(entry.path)))
    return out


def collect(
    sources: Iterable[str | os.PathLike] = (),
    *,
    directory: str | os.PathLike | None = None,
    base: str | os.PathLike | None = None,
    extra_ignore: Sequence[str] = (),
) -> Collected:
    """Decide which local files a job ships, and under which relative names.

    ``directory`` is walked honouring ``.gitignore`` files at every level,
    ``.homieignore`` at its root and ``extra_ignore`` (gitignore syntax), and
    always skipping ``.git``, ``.venv`` and ``__pycache__`` (plus a top-level
    ``.homie``, which is reserved in the job directory). Symlinked directories
    are not followed; a symlinked file is sent with its target's contents
    when the target is inside the directory, and skipped with a warning
    otherwise.

    ``sources`` are files or glob patterns (``**`` recurses). A file inside
    ``directory`` keeps its path there; otherwise it is named relative to
    ``base`` (default: the current directory) when inside it, else by its
    basename. Explicitly named symlinks are followed: the user asked for them.
    """
    warnings: list[str] = []
    by_rel: dict[str, Path] = {}
    dir_str = os.path.abspath(directory) if directory is not None else None
    base_str = os.path.abspath(base) if base is not None else os.getcwd()

    def add(rel: str, path: Path, origin: str) -> None:
        prev = by_rel.get(rel)
        if prev is not None and os.path.realpath(prev) != os.path.realpath(path):
            raise HomieError(f"{prev} and {path} would both be sent as {rel!r}{origin}")
        by_rel[rel] = path

    if dir_str is not None:
        if not os.path.isdir(dir_str):
            raise HomieError(f"directory not found: {directory}")
        for walked, path in _walk_dir(dir_str, extra_ignore, warnings):
            add(walked, path, "")

    for src in sources:
        src = os.fspath(src)
        if any(c in src for c in "*?["):
            matches = sorted(m for m in glob.glob(src, recursive=True) if os.path.isfile(m))
            if not matches:
                raise HomieError(f"no files match {src!r}")
        else:
            if not os.path.exists(src):
                raise HomieError(f"file not found: {src}")
            if not os.path.isfile(src):
                raise HomieError(f"not a regular file: {src}")
            matches = [src]
        for m in matches:
            rel = None
            if dir_str is not None:
                rel = _rel_to(m, dir_str)
            if rel is None:
                rel = _rel_to(m, base_str)
            if rel is None:
                rel = os.path.basename(os.path.abspath(m))
            add(rel, Path(os.path.abspath(m)), f" (from {src!r})")

    # Fail here with the local file name rather than on the worker: the
    # worker would refuse these names (e.g. "Makefile" next to "makefile").
    hint = " (rename it, or add it to .homieignore)"
    for rel in by_rel:
        try:
            check_relpath(rel)
        except ManifestError as e:
            raise HomieError(f"cannot send {by_rel[rel]}: {e}{hint}") from None
    try:
        _check_collisions(by_rel)
    except ManifestError as e:
        raise HomieError(f"cannot send these files: {e}{hint}") from None
    return Collected(sorted(by_rel.items()), warnings)


def summarize(files: Iterable[tuple[str, Path]]) -> tuple[int, int]:
    """(number of files, total bytes): shown before a large upload."""
    count = total = 0
    for _, path in files:
        count += 1
        total += os.stat(path).st_size
    return count, total


def atomic_write(path: str | os.PathLike, data: bytes, mode: int = 0o600, fsync: bool = True) -> None:
    """Replace `path` with `data` in one rename: a reader (or a restart after a
    power cut) sees the old content or the new one, never half of either."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
