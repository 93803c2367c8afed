"""Writing files under a root without following symlinks.

:class:`SafeWriter` walks the tree with ``dir_fd`` + ``O_NOFOLLOW`` +
``O_EXCL`` so that a symlink planted by a previous job (or anyone else)
cannot redirect a write.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import IO

from homie.errors import HomieError, ManifestError
from homie.files.manifest import _MODES, MODE_FILE, MiB, _show, check_relpath

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
    buf = bytearray(MiB)
    view = memoryview(buf)
    while True:
        n = os.readv(src, [buf])
        if not n:
            return
        off = 0
        while off < n:
            off += os.write(dst, view[off:n])

