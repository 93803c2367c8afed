"""Who a job runs as.

Under a root daemon every running job gets a uid (and a group of the same
number) of its own from a reserved range, the way systemd's DynamicUser and
HTCondor's slot users work: two jobs never share a uid, so one can neither
signal nor read anything of another, and nothing a job leaves behind can be
mistaken for someone else's. A uid is held by a lock file under /run for as
long as the job exists, so several homie daemons on one machine (or a
restarted one) never hand out the same uid twice. A daemon that is not root
has only its own uid: the sandbox's user namespace separates its jobs.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import stat
import threading
from dataclasses import dataclass

from homie.errors import HomieError

DEFAULT_RANGE = (61184, 65519)  # systemd's DynamicUser range: never in /etc/passwd
LOCK_DIR = "/run/homie/uids"


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    name: str

    @property
    def differs(self) -> bool:
        return self.uid != os.geteuid()


def parse_range(text: str) -> tuple[int, int]:
    """'61184-65519' -> (61184, 65519); the config validator's work."""
    lo, sep, hi = str(text).partition("-")
    try:
        a, b = int(lo), int(hi)
    except ValueError:
        raise ValueError("must look like 61184-65519") from None
    if not sep or not 1000 <= a <= b < 2**31 - 1:
        raise ValueError("must be FIRST-LAST with 1000 <= FIRST <= LAST")
    return a, b


def _safe_lock_dir(path: str) -> int:
    """Open (creating) the lock directory, refusing one that anyone but root could have planted."""
    parent = os.path.dirname(path)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022 or not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise HomieError(f"{path} is not a root-owned private directory: refusing to use it for job uids")
    return fd


class Identities:
    """Hands out job identities and takes them back."""

    def __init__(self, uid_range: tuple[int, int] = DEFAULT_RANGE, fixed_user: str | None = None,
                 lock_dir: str = LOCK_DIR):
        self.root = os.geteuid() == 0
        self.range = uid_range
        self.fixed: Identity | None = None
        self._held: dict[str, tuple[Identity, int]] = {}
        self._lock = threading.Lock()
        self._dirfd: int | None = None
        self._lock_dir = lock_dir
        if not self.root:
            pw = pwd.getpwuid(os.geteuid())
            self.fixed = Identity(pw.pw_uid, pw.pw_gid, pw.pw_name)
        elif fixed_user:
            try:
                pw = pwd.getpwnam(fixed_user)
            except KeyError:
                raise HomieError(f"job_user {fixed_user!r} does not exist on this machine", 2) from None
            if pw.pw_uid == 0:
                raise HomieError("job_user must not be root: jobs never run as root", 2)
            self.fixed = Identity(pw.pw_uid, pw.pw_gid, pw.pw_name)

    @property
    def per_job(self) -> bool:
        return self.fixed is None

    def probe_uid(self) -> int | None:
        """A uid to try the sandbox as at start-up (None: as ourselves)."""
        if self.fixed is not None:
            return self.fixed.uid if self.fixed.differs else None
        return self.range[0]

    def acquire(self, job_id: str) -> Identity:
        if self.fixed is not None:
            return self.fixed
        with self._lock:
            if job_id in self._held:
                return self._held[job_id][0]
            if self._dirfd is None:
                self._dirfd = _safe_lock_dir(self._lock_dir)
            taken = {ident.uid for ident, _ in self._held.values()}
            for uid in range(self.range[0], self.range[1] + 1):
                if uid in taken or _has_passwd_entry(uid):
                    continue
                fd = self._lock_uid(uid)
                if fd is None:
                    continue  # another daemon's job has it
                ident = Identity(uid, uid, f"homie-job-{uid}")
                self._held[job_id] = (ident, fd)
                return ident
        raise HomieError(f"no free job uid left in {self.range[0]}-{self.range[1]}")

    def in_use_elsewhere(self, uid: int) -> bool:
        """Does another live daemon hold `uid` for a job now? (Checked before a
        restart kills the processes of a uid the last run had given out.)"""
        if self.fixed is not None or not self.range[0] <= uid <= self.range[1]:
            return True  # not a uid from our pool: never ours to sweep
        with self._lock:
            if self._dirfd is None:
                self._dirfd = _safe_lock_dir(self._lock_dir)
            fd = self._lock_uid(uid)
            if fd is None:
                return True
            os.close(fd)
            return False

    def _lock_uid(self, uid: int) -> int | None:
        """The fd holding uid's lock file flocked, or None if another daemon holds it (caller holds _lock)."""
        fd = os.open(str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._dirfd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def release(self, job_id: str) -> None:
        with self._lock:
            held = self._held.pop(job_id, None)
        if held is not None:
            os.close(held[1])  # drops the flock

    def held(self) -> dict[str, Identity]:
        with self._lock:
            return {j: ident for j, (ident, _) in self._held.items()}


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False
