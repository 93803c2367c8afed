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

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Collection
from pathlib import Path

from homie import files
from homie.errors import HomieError, ManifestError
from homie.worker.identity import Identity

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
SYSTEM_WORK = "/var/lib/homie"


def passable_by_others(path: str | os.PathLike) -> bool:
    """Every directory from / down to `path`, and `path` itself, lets other
    users through (o+x): what a job's own uid needs to reach or run it."""
    p = Path(os.path.realpath(path))
    try:
        for d in (p, *p.parents):
            if not os.stat(d).st_mode & 0o001:
                return False
    except OSError:
        return False
    return True


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
    if os.geteuid() == 0 and per_job_uids and not passable_by_others(home_root):
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
    def build(self, job_id: str, entries, blobs, ident: Identity, link: bool, sandboxed: bool,
              mkdirs: tuple[str, ...] = ()) -> Path:
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
            for d in mkdirs:  # directories the job is told about (its checkpoint/), unless an input took the name
                try:
                    os.mkdir(stage / d, 0o700)
                except FileExistsError:
                    pass
            if ident.differs:
                give(stage, ident.uid, ident.gid)
            os.rename(stage, final)
        except BaseException:
            remove(stage)
            raise
        return final


MAX_DEPTH = 128  # directory levels walked below a job directory or venv


class TooDeep(HomieError):
    pass


def _open_dir(top: int, rel: str) -> int:
    """Open root/rel (a directory) from the root's fd, one component at a time, never through a link."""
    fd = os.dup(top)
    try:
        for part in rel.split("/") if rel else ():
            nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def walk(root: Path, on_deep: str = "raise"):
    """Yield (rel_dir, dir_fd, subdirs, others) top-down below root, by
    descriptor, iteratively (a job can nest directories deeper than Python's
    recursion allows), never following a link. Each directory is reopened from
    the root, so open descriptors stay few however wide the tree. `subdirs`
    may be pruned in place. Deeper than MAX_DEPTH: TooDeep, or skipped."""
    top = os.open(root, _DIR_FLAGS)
    try:
        stack = [("", 0)]
        while stack:
            rel, depth = stack.pop()
            try:
                fd = _open_dir(top, rel)
            except OSError:
                continue  # replaced meanwhile (a job's own tree, while it runs): not ours to follow
            try:
                subdirs: list[str] = []
                others: list[str] = []
                with os.scandir(fd) as it:
                    for e in it:
                        (subdirs if e.is_dir(follow_symlinks=False) else others).append(e.name)
                yield rel, fd, subdirs, others
            finally:
                os.close(fd)
            if subdirs and depth >= MAX_DEPTH:
                if on_deep == "raise":
                    raise TooDeep(f"more than {MAX_DEPTH} directory levels under {root}")
                continue
            stack.extend((f"{rel}/{d}" if rel else d, depth + 1) for d in reversed(subdirs))
    finally:
        os.close(top)


def give(root: Path, uid: int, gid: int, *, shared_blobs: bool = True, strip_modes: bool = False,
         only_from: int | None = None) -> None:
    """chown a tree to uid:gid without following a link, walking by descriptor.

    shared_blobs: files with more than one link (cache blobs hard-linked into
    a job directory) stay the daemon's: a job may read them but never change a
    cached input for the next job. Off when taking a tree back from a job,
    where a link count is the job's to choose. only_from: taking a tree back
    from that uid, only what it owns changes hands: a file of someone else's a
    job hard-linked in keeps its owner (and a setuid binary its bit).
    strip_modes: no setuid/setgid/sticky bits and no group/other write survive
    (what a job built and hands back to be shared, a venv)."""
    for rel, dfd, subdirs, others in walk(root):
        if not rel:
            os.fchown(dfd, uid, gid)
            if strip_modes:
                os.fchmod(dfd, stat.S_IMODE(os.fstat(dfd).st_mode) & 0o755)
        for name in subdirs + others:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if shared_blobs and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                continue
            if only_from is not None and st.st_uid != only_from:
                continue
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            if strip_modes and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                # not a link (lstat above), and nothing of the job runs any more to swap it
                os.chmod(name, stat.S_IMODE(st.st_mode) & 0o755, dir_fd=dfd)


def remove(path: Path) -> None:
    """Remove a tree without ever leaving it, whatever a job made of it:
    links are unlinked, never followed; unreadable directories are opened up
    first (by descriptor); and subdirectories are hoisted to the top before
    they are emptied, so depth costs neither recursion nor descriptors."""
    parent = os.open(os.path.dirname(os.path.abspath(path)), _DIR_FLAGS)
    name = os.path.basename(os.path.abspath(path))
    try:
        try:
            top = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            return
        except OSError:
            os.unlink(name, dir_fd=parent)  # a link or a file where a directory was expected
            return
        try:
            _empty(top)
        finally:
            os.close(top)
        os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)


def _empty(top: int) -> None:
    hoisted = 0
    while True:
        names = os.listdir(top)
        if not names:
            return
        for n in names:
            try:
                st = os.stat(n, dir_fd=top, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(n, dir_fd=top)
                continue
            d = os.open(n, _DIR_FLAGS, dir_fd=top)
            try:
                if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
                    os.fchmod(d, 0o700)  # a job's 000 directory: ours to empty (the daemon owns it or is root)
                for c in os.listdir(d):
                    cst = os.stat(c, dir_fd=d, follow_symlinks=False)
                    if stat.S_ISDIR(cst.st_mode):
                        while True:  # hoist it to the top, under a name not taken
                            hoisted += 1
                            try:
                                os.rename(c, f".homie-rm-{hoisted}", src_dir_fd=d, dst_dir_fd=top)
                                break
                            except OSError as e:
                                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                                    raise
                    else:
                        os.unlink(c, dir_fd=d)
            finally:
                os.close(d)
            os.rmdir(n, dir_fd=top)


# -- reading back ---------------------------------------------------------------------------
class TooMany(HomieError):
    pass


def scan(root: Path, keep: Callable[[str, bool], bool] | None = None,
         limit: int | None = None) -> dict[str, tuple[int, int, int]]:
    """relpath -> (size, mtime_ns, inode) of every regular file under root,
    walked by descriptor; links are neither listed nor followed; what lies
    deeper than MAX_DEPTH is not listed. keep(rel, is_dir): whether to look at
    (into) rel at all; more than `limit` entries kept (files, directories, links:
    each costs a stat or a walk): TooMany (what runs every second must not cost
    what a job chooses)."""
    out: dict[str, tuple[int, int, int]] = {}
    looked = 0
    try:
        for rel_dir, dfd, subdirs, others in walk(root, on_deep="skip"):
            if not rel_dir and files.RESERVED_DIR in subdirs:
                subdirs.remove(files.RESERVED_DIR)  # homie's own (the unsandboxed job's TMPDIR)
            if keep is not None:
                subdirs[:] = [d for d in subdirs if keep(f"{rel_dir}/{d}" if rel_dir else d, True)]
            looked += len(subdirs)
            if limit is not None and looked > limit:
                raise TooMany(f"more than {limit} entries")
            for name in others:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if keep is not None and not keep(rel, False):
                    continue
                looked += 1
                if limit is not None and looked > limit:
                    raise TooMany(f"more than {limit} entries")
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    except OSError:
        pass
    return out


def changed(root: Path, before: dict[str, tuple[int, int, int]]) -> list[str]:
    """Files created or modified under root since ``before = scan(root)``, sorted.
    Names are as found: the caller still validates them (a job can create names
    a manifest refuses)."""
    return sorted(rel for rel, sig in scan(root).items() if before.get(rel) != sig)


def tree_size(root: Path) -> int:
    """Bytes in the regular files under root (links not followed)."""
    return sum(size for size, _, _ in scan(root).values())


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


def inodes(scanned: dict[str, tuple[int, int, int]]) -> frozenset[int]:
    """The inodes of a scan() (a job's inputs, for not_the_jobs)."""
    return frozenset(ino for _, _, ino in scanned.values())


def not_the_jobs(st: os.stat_result, uid: int, inputs: Collection[int] = ()) -> bool:
    """A file in a job's directory that the job did not make and was not given: another
    owner than the job's uid, and not one of its inputs (`inputs`: their inodes; they
    are the daemon's, hard-linked from the blob cache). Sent home as a result or
    checkpoint it would carry what the job may not read: without a sandbox and with
    fs.protected_hardlinks off, a job's uid can link /etc/shadow into its directory
    (and keep it after a rename leaves it that one name), and the daemon reads as root.
    Asked while the job's files are still its own (before its directory is taken back)."""
    return st.st_uid != uid and st.st_ino not in inputs
