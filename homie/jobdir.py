"""Job directories on the worker: built where no job can reach, handed over
whole, and read back only through descriptors that never follow a link.

Layout of the work area (``WorkArea.root``):

    <root>/            0711 (root daemon) or 0700: jobs can pass, not list
      .staging/        0700, the daemon's: a job directory is built here ...
      <job_id>/        0700, the job's: ... and renamed here when complete
      .venvs/<key>/    cached virtual environments, read-only to jobs

A root daemon whose home sits in a private directory (the default
/root/.homie) keeps its work area under /var/lib/homie: bubblewrap runs as
the job's own uid and must be able to reach the directory it binds, and the
home is never opened up for that.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from homie import files
from homie.errors import HomieError, ManifestError
from homie.identity import Identity

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SYSTEM_WORK = "/var/lib/homie"


def _passable_by_others(path: Path) -> bool:
    """Every directory from / down to `path` lets other users through."""
    p = path
    try:
        while True:
            if p.exists() and not os.stat(p).st_mode & 0o001:
                return False
            if p == p.parent:
                return True
            p = p.parent
    except OSError:
        return False


def _private_dir(path: Path, mode: int, owner: int) -> None:
    """mkdir, or check that what is there is ours, a directory, no symlink; then set its mode."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    fd = os.open(path, _DIR_FLAGS)
    try:
        st = os.fstat(fd)
        if st.st_uid != owner:
            raise HomieError(f"{path} belongs to uid {st.st_uid}, not to this daemon: refusing to use it", 2)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def work_root(home_root: Path, per_job_uids: bool) -> Path:
    """Where a daemon with this home keeps its job directories."""
    home_root = Path(home_root)
    if os.geteuid() == 0 and per_job_uids and not _passable_by_others(home_root):
        tag = hashlib.sha256(os.fsencode(str(home_root))).hexdigest()[:10]
        return Path(SYSTEM_WORK) / f"work-{tag}"
    return home_root / "work"


class WorkArea:
    def __init__(self, home_root: Path, per_job_uids: bool):
        me = os.geteuid()
        self.root = work_root(home_root, per_job_uids)
        if self.root.parent == Path(SYSTEM_WORK):
            _private_dir(Path(SYSTEM_WORK), 0o711, me)
        self.shared = me == 0 and per_job_uids  # other uids must pass through the root
        _private_dir(self.root, 0o711 if self.shared else 0o700, me)
        self.staging = self.root / ".staging"
        self.venvs = self.root / ".venvs"
        _private_dir(self.staging, 0o700, me)
        _private_dir(self.venvs, 0o711 if self.shared else 0o700, me)

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    # -- building ---------------------------------------------------------------------
    def build(self, job_id: str, entries, blobs, ident: Identity, link: bool, sandboxed: bool) -> Path:
        """Materialise the inputs in staging, give them to the job's uid, move them into place."""
        stage = self.staging / job_id
        final = self.job_dir(job_id)
        if final.exists() or stage.exists():
            raise HomieError(f"a job directory for {job_id} already exists")
        os.mkdir(stage, 0o700)
        try:
            if not sandboxed:
                os.makedirs(stage / files.RESERVED_DIR / "tmp", 0o700)  # its TMPDIR; the sandbox has /tmp
            writer = files.SafeWriter(stage)
            for e in entries:
                writer.link_or_copy_new(blobs.path(e.sha256), e.path, e.mode, link=link)
                blobs.touch(e.sha256)
            if ident.differs:
                give(stage, ident.uid, ident.gid)
            os.rename(stage, final)
        except BaseException:
            remove(stage)
            raise
        return final


def give(root: Path, uid: int, gid: int) -> None:
    """chown a tree to uid:gid without following a link, walking by descriptor.
    Hard-linked cache blobs (more than one link) stay the daemon's: a job may
    read them but never change a cached input for the next job."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        os.fchown(fd, uid, gid)
        for _dirpath, dirnames, filenames, dfd in os.fwalk(dir_fd=fd, follow_symlinks=False):
            for name in dirnames:
                os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            for name in filenames:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if st.st_nlink == 1 or not stat.S_ISREG(st.st_mode):
                    os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """rmtree that never leaves the tree (shutil's fd-based walk) and gets
    through directories a job made unreadable."""
    def onerror(func, p, exc):
        try:
            parent = os.open(os.path.dirname(p), _DIR_FLAGS)
            try:
                os.chmod(os.path.basename(p), 0o700, dir_fd=parent, follow_symlinks=False)
            except (OSError, NotImplementedError):
                pass
            finally:
                os.close(parent)
            func(p)
        except OSError:
            pass

    if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - every Linux has it
        raise HomieError("refusing to remove job directories on a platform without safe rmtree")
    try:
        os.chmod(path, 0o700, follow_symlinks=False)
    except (OSError, NotImplementedError):
        pass
    shutil.rmtree(path, onerror=onerror)


# -- reading back ---------------------------------------------------------------------------
def scan(root: Path) -> dict[str, tuple[int, int, int]]:
    """relpath -> (size, mtime_ns, inode) of every regular file under root,
    walked by descriptor; links are neither listed nor followed."""
    out: dict[str, tuple[int, int, int]] = {}
    try:
        top = os.open(root, _DIR_FLAGS)
    except OSError:
        return out
    try:
        for dirpath, dirnames, filenames, dfd in os.fwalk(dir_fd=top, follow_symlinks=False):
            rel_dir = "" if dirpath == "." else dirpath[2:] if dirpath.startswith("./") else dirpath
            if not rel_dir and files.RESERVED_DIR in dirnames:
                dirnames.remove(files.RESERVED_DIR)  # homie's own (the unsandboxed job's TMPDIR)
            for name in filenames:
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    finally:
        os.close(top)
    return out


def open_beneath(root: Path, rel: str) -> int:
    """An fd for the regular file root/rel, reached one component at a time
    with O_NOFOLLOW: a symlink anywhere on the way is an error, not a detour."""
    files.check_relpath(rel)
    *dirs, name = rel.split("/")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in dirs:
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(name, _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(ffd).st_mode):
        os.close(ffd)
        raise ManifestError(f"{rel!r} is not a regular file")
    return ffd


def sha256_fd(fd: int) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    os.lseek(fd, 0, os.SEEK_SET)
    while n := os.readv(fd, [buf]):
        h.update(view[:n])
        size += n
    return size, h.hexdigest()
