"""The worker's content-addressed blob cache: files by sha256, verified before
they get their name, LRU-evicted."""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from homie.errors import ManifestError
from homie.files.manifest import _HEX, _check_sha
from homie.files.safewrite import _NO_LINK_ERRNOS


class BlobCache:
    """Files by sha256 under ``dir/ab/abcdef...``, read-only, LRU-evicted to ``max_bytes``.

    Recency is the blob's *atime*, set explicitly by :meth:`touch`, not its
    mtime: blobs are hardlinked into job directories, and bumping the shared
    inode's mtime would make another running job report its input as a
    result file. The in-memory index is built by one scan at start.
    """

    def __init__(self, dir: str | os.PathLike, max_bytes: int, *, fsync: bool = True):
        self.dir = Path(dir)
        self._dir = str(self.dir)
        self.max_bytes = max_bytes
        # fsync before the blob gets its name: after a power cut a blob must be whole or
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
        return Path(self._path(sha))

    def _path(self, sha: str) -> str:
        # A str, not a Path: pathlib's joins were a visible part of a job's set-up (eight a job).
        _check_sha(sha)
        return f"{self._dir}/{sha[:2]}/{sha}"

    def has(self, sha: str) -> bool:
        p = self._path(sha)
        with self._lock:
            if sha not in self._index:
                return False
            if os.path.exists(p):
                return True
            # Deleted behind our back (a user cleaning ~/.homie): forget it.
            self._total -= self._index.pop(sha)[0]
            return False

    def touch(self, sha: str) -> None:
        p = self._path(sha)
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

    def writer(self, sha: str, size: int, *, hashed_by_caller: bool = False) -> BlobWriter:
        _check_sha(sha)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError(f"invalid size {size!r} for blob {sha[:12]}")
        return BlobWriter(self, sha, size, hashed_by_caller=hashed_by_caller)

    def _commit(self, tmp: str, sha: str, size: int) -> None:
        final = self.path(sha)
        final.parent.mkdir(mode=0o700, exist_ok=True)
        # The blob gets its name by link(), which never replaces: readers see no
        # blob or the whole verified one, and a name once given keeps its inode.
        # Replacing it (rename) when the same file arrived through two uploads at
        # once made a job's concurrent link() of the old inode fail with ENOENT.
        try:
            os.link(tmp, final)
        except FileExistsError:
            try:
                intact = os.stat(final, follow_symlinks=False).st_size == size
            except OSError:
                intact = False
            if not intact:  # torn or changed behind our back: the verified upload wins
                os.replace(tmp, final)
        except OSError as e:
            if e.errno not in _NO_LINK_ERRNOS:
                raise
            os.replace(tmp, final)  # a filesystem without hard links
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        with self._lock:
            old = self._index.get(sha)
            if old is not None:
                self._total -= old[0]
            self._index[sha] = [size, time.time_ns()]
            self._total += size


class WriteState(str, enum.Enum):
    """Where one blob upload is: open until committed (verified and named) or aborted."""

    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"

    def __str__(self) -> str:
        return self.value


class BlobWriter:
    """Streams one blob to a temp file; :meth:`commit` verifies size and hash.

    As a context manager it commits on a clean exit and discards on an
    exception, so a failed upload never leaves anything under the final name.
    """

    def __init__(self, cache: BlobCache, sha: str, size: int, *, hashed_by_caller: bool = False):
        self.sha = sha
        self.size = size
        self.written = 0
        self._cache = cache
        # hashed_by_caller: the transfer engine hashes on its own thread while
        # this one writes (receiving, hashing and writing overlap); it hands the
        # digest of exactly the bytes written to commit(), which still checks it.
        self._hash = None if hashed_by_caller else hashlib.sha256()
        fd, self._tmp = tempfile.mkstemp(dir=cache._tmp, prefix=sha[:12] + ".")
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self.state = WriteState.OPEN

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.state is not WriteState.OPEN:
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
        if self._hash is not None:
            self._hash.update(chunk)
        self.written += n

    def commit(self, digest: str | None = None) -> None:
        """Verify size and hash, then give the blob its name. `digest` is the
        caller's sha256 of the bytes written, required with hashed_by_caller."""
        if self.state is WriteState.COMMITTED:
            return
        if self.state is WriteState.ABORTED:
            # Never let a caller that swallowed a write error think it stored the blob.
            raise ManifestError(f"blob {self.sha[:12]} was aborted; content does not match its hash")
        try:
            got = self._hash.hexdigest() if self._hash is not None else digest
            if self.written != self.size or got != self.sha:
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
            self.state = WriteState.COMMITTED
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self.state is not WriteState.OPEN:
            return
        self.state = WriteState.ABORTED
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

