"""Where a node keeps its state: HOMIE_HOME (default ~/.homie)."""

from __future__ import annotations

import os
import stat

from homie.errors import UnsafeHomeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


class Home:
    """The home's paths (pathlib.Path), made on first use: `homie run` needs only
    the control socket's path and the safety check, which work on the plain
    string, so it does not import pathlib (~4 ms at start-up)."""

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            root = os.environ.get("HOMIE_HOME") or os.path.join(os.path.expanduser("~"), ".homie")
        root = os.path.expanduser(os.fspath(root))
        # As Path.absolute(): joined to the working directory, not normalised (no .. folding).
        self.path = root if os.path.isabs(root) else os.path.join(os.getcwd(), root)

    @property
    def root(self) -> Path:
        from pathlib import Path

        return Path(self.path)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.path, "homie.sock")

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def key(self) -> Path:
        return self.root / "key"

    @property
    def socket(self) -> Path:
        return self.root / "homie.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "homie.pid"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "homie.log"

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def jobs(self) -> Path:
        """Job directories of jobs this node runs for others (worker side)."""
        return self.root / "work"

    @property
    def outbox(self) -> Path:
        """Per-job state of jobs this node submitted: fetched results, logs."""
        return self.root / "jobs"

    @property
    def blobs(self) -> Path:
        return self.root / "cache" / "blobs"

    @property
    def venvs(self) -> Path:
        return self.root / "cache" / "venvs"

    def check(self, owned: bool = True) -> None:
        """Refuse a home that another local user could change under us: the
        daemon (often root) trusts what it finds there, and a symlinked `key`
        once made `homie key` chmod the link's target.

        owned=False is for commands that only talk to the daemon's socket: the
        system service's home belongs to the user homie, and members of its
        group drive the daemon with HOMIE_HOME=/var/lib/homie.
        A home that does not exist yet is fine: ensure() creates it private."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError:
            return  # unreachable (a group member without search permission): the commands say so themselves
        _check_home(self.path, st, owned)

    def ensure(self) -> None:
        self.check()
        # 0700: the home holds the key, the control socket and other people's jobs.
        old = os.umask(0o077)
        try:
            for d in (self.root, self.root / "logs", self.jobs, self.outbox, self.blobs, self.venvs):
                d.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
        # Checked again on the directory actually opened, so nothing can be
        # swapped in between; O_NOFOLLOW: a symlink fails here (ELOOP).
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as e:
            raise UnsafeHomeError(f"cannot open the home {self.root}: {e.strerror}") from None
        try:
            _check_home(self.root, os.fstat(fd), owned=True)
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
        # Older versions left these to the umask (state.db 0644: every job's
        # arguments readable by any local user once the home was made passable).
        from pathlib import Path

        for p in (self.db, Path(f"{self.db}-wal"), Path(f"{self.db}-shm"), self.pidfile, self.log,
                  self.root / "logs" / "daemon.err", self.root / "logs", self.outbox):
            tighten(p)


def open_private(path: str | os.PathLike, flags: int) -> int:
    """os.open for the home's own files: never through a symlink (ELOOP), and
    0600 when created whatever the umask of the caller."""
    fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    if flags & os.O_CREAT:
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077 and st.st_uid == os.geteuid() and st.st_nlink == 1:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError:
            os.close(fd)
            raise
    return fd


def tighten(path: str | os.PathLike) -> None:
    """Take the group and other bits off one of the home's own files or
    directories; never through a symlink, never another user's file, never a
    file with other names (a hard link to something outside)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # missing, a symlink, a socket: nothing of ours to tighten
    try:
        st = os.fstat(fd)
        plain = stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1)
        if plain and st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_home(root: str | Path, st: os.stat_result, owned: bool) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeHomeError(f"unsafe home {root}: it is a symlink (set HOMIE_HOME to the directory itself)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeHomeError(f"unsafe home {root}: it is not a directory")
    me = os.geteuid()
    if owned and st.st_uid != me:
        raise UnsafeHomeError(f"unsafe home {root}: it belongs to {_user(st.st_uid)}, not to {_user(me)}"
                              " (use a home of your own: set HOMIE_HOME)")
    if st.st_mode & 0o022:
        raise UnsafeHomeError(f"unsafe home {root}: other users can write to it (mode"
                              f" {stat.S_IMODE(st.st_mode):04o}; fix: chmod go-w {root})")
    # Whoever can write to the parent can rename the home away and put their own
    # in its place, unless the sticky bit (as on /tmp) stops them.
    parent = os.path.dirname(os.path.normpath(root))
    try:
        pst = os.stat(parent)
    except OSError:
        return
    if owned and pst.st_uid not in (0, me):
        raise UnsafeHomeError(f"unsafe home {root}: the directory holding it, {parent}, belongs to"
                              f" {_user(pst.st_uid)} (use a home of your own: set HOMIE_HOME)")
    if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
        raise UnsafeHomeError(f"unsafe home {root}: other users can write to the directory holding it, {parent}"
                              f" (mode {stat.S_IMODE(pst.st_mode):04o}), and so replace the home")


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
