"""The job sandbox: bubblewrap namespaces around every job on Linux.

A job sees its own directory read-write at /job (its cwd), the system
read-only (/usr, /etc, the interpreter it runs), a private size-capped /tmp
holding its HOME, its own /proc, pid, ipc and uts namespaces and a minimal
/dev: nothing of /home, /root, the homie home, other jobs or the daemon.

bubblewrap is always started *unprivileged* (as the job's uid under a root
daemon, as the owner otherwise) so that it builds a user namespace whose
only mapping is that uid: running it as root with ``--uid`` would map the
job onto real root outside the namespace. The pid namespace gives the
whole-tree kill: when the sandbox's init dies, the kernel kills every
process in it, ``setsid`` or not, and ``--die-with-parent`` ends it when the
daemon dies, even of kill -9.
"""

from __future__ import annotations

import enum
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

JOB_DIR = "/job"  # where the job directory appears inside the sandbox
VENV_DIR = "/venv"  # where a cached virtual environment appears
HOME_DIR = "/tmp/home"  # the job's HOME: inside its private /tmp, gone with it
TMP_BYTES_DEFAULT = 1 << 30

# Top-level paths a program may need that live outside /usr on some systems;
# on merged-/usr systems they are symlinks and are recreated as such.
_SYSTEM_TOPS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class Mode(enum.Enum):
    AUTO = "auto"
    REQUIRED = "required"
    OFF = "off"


@dataclass(frozen=True)
class Status:
    """Whether jobs here run sandboxed, and if not, why (shown by up, doctor, peers)."""

    active: bool
    reason: str
    disable_userns: bool = True  # the kernel lets bwrap forbid nested user namespaces

    @property
    def label(self) -> str:
        return "bwrap" if self.active else "none"


@dataclass
class Spec:
    """What one sandboxed command gets, beyond the fixed system view."""

    job_dir: str | None = None  # host path bound read-write at JOB_DIR (also the cwd)
    venv: str | None = None  # host path bound at VENV_DIR
    venv_writable: bool = False
    network: bool = True
    gpus: list[str] | None = None  # indices of the NVIDIA GPUs granted (None: none)
    ro_paths: list[str] = field(default_factory=list)
    tmp_bytes: int = TMP_BYTES_DEFAULT
    env: dict[str, str] | None = None  # the job's whole environment (set inside; bwrap itself gets none)
    info_fd: int | None = None
    block_fd: int | None = None  # bwrap waits on it before starting the job (cgroup placement)


# Tools the daemon runs on a job's behalf come from these root-owned directories
# only, never from a PATH: a job's PATH (a venv's bin/) is the job's to fill.
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


def system_tool(name: str) -> str | None:
    """The absolute path of a system tool (bwrap, prlimit), or None."""
    found = shutil.which(name, path=SYSTEM_PATH)
    return os.path.realpath(found) if found else None


def bwrap_path() -> str | None:
    return system_tool("bwrap")


class SandboxError(ValueError):
    pass


def interpreter_roots(python: str, private: tuple[str, ...] = ()) -> list[str]:
    """Directories to bind read-only so that `python` runs in the sandbox:
    none when it lives under /usr, else its installation prefix (a pyenv or
    conda install), never a directory holding a home or the homie home."""
    real = os.path.realpath(python)
    if not os.path.isfile(real):
        raise SandboxError(f"the job Python {python} does not exist (set job_python)")
    if real.startswith("/usr/"):
        return []
    prefix = os.path.dirname(os.path.dirname(real))  # .../bin/python3.11 -> ...
    if prefix in ("/", ""):
        raise SandboxError(f"the job Python {real} has no installation prefix of its own; set job_python")
    for p in private:
        p = os.path.realpath(p)
        if p == prefix or p.startswith(prefix.rstrip("/") + "/"):
            raise SandboxError(f"the job Python's prefix {prefix} holds {p}: binding it would show jobs"
                               " that; set job_python to an interpreter installed elsewhere")
    return [prefix]


def _system_binds(network: bool) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in _SYSTEM_TOPS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    # /etc for DNS, TLS certificates, locales; secrets there are root-only files
    # that the job's uid cannot read anyway.
    args += ["--ro-bind", "/etc", "/etc"]
    # /etc/resolv.conf is often a symlink into /run (systemd-resolved,
    # NetworkManager): that one file, never its directory (which may hold
    # resolved's socket), and nothing at all for a job without network.
    try:
        target = os.path.realpath("/etc/resolv.conf")
        if network and target.startswith("/run/") and os.path.isfile(target):
            args += ["--ro-bind", target, target]
    except OSError:
        pass
    # What numeric libraries read to size their thread pools; flatpak exposes the same.
    if os.path.isdir("/sys/devices/system/cpu"):
        args += ["--ro-bind", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    return args


def _gpu_binds(indices: list[str]) -> list[str]:
    """The granted NVIDIA GPUs and the driver's shared nodes; no other GPU."""
    wanted = {f"/dev/nvidia{i}" for i in indices}
    args = []
    for dev in sorted(glob.glob("/dev/nvidia*")):
        name = os.path.basename(dev)
        if dev in wanted or not name[len("nvidia"):].isdigit():  # nvidiactl, nvidia-uvm, nvidia-caps, ...
            args += ["--dev-bind", dev, dev]
    return args


def options(argv: list[str], spec: Spec, python: str | None = None, disable_userns: bool = True,
            private: tuple[str, ...] = ()) -> list[str]:
    """bwrap's options (everything after `bwrap`) to run `argv` in the sandbox."""
    args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "homie-job"]
    if disable_userns:
        args.append("--disable-userns")  # no nested namespaces: less kernel surface
    if not spec.network:
        args.append("--unshare-net")  # only lo inside
    args += _system_binds(spec.network)
    for root in interpreter_roots(python, private) if python else []:
        args += ["--ro-bind", root, root]
    # Every writable tmpfs is capped: the sandbox's / and /dev would otherwise
    # take up to half the RAM each, which no RSS watch sees.
    size = str(spec.tmp_bytes)
    args += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/dev/shm"]
    if spec.gpus:
        args += _gpu_binds(spec.gpus)
    args += ["--size", size, "--perms", "0700", "--tmpfs", "/tmp", "--dir", HOME_DIR]
    for p in spec.ro_paths:
        args += ["--ro-bind-try", p, p]
    if spec.venv:
        args += ["--bind" if spec.venv_writable else "--ro-bind", spec.venv, VENV_DIR]
    if spec.job_dir:
        args += ["--bind", spec.job_dir, JOB_DIR, "--chdir", JOB_DIR]
    else:
        args += ["--chdir", "/tmp"]
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    if spec.env is not None:
        args.append("--clearenv")
        for k, v in spec.env.items():
            args += ["--setenv", k, v]
    if spec.info_fd is not None:
        args += ["--info-fd", str(spec.info_fd)]
    if spec.block_fd is not None:
        args += ["--block-fd", str(spec.block_fd)]
    return [*args, "--", *argv]


# bubblewrap refuses more than 9000 arguments of its own; a job may have far
# more (homie run x.py $(seq 120000)). Such a command is handed over in a memfd
# and re-exec'd inside the sandbox by the job's own Python: same pid, same
# exit status, nothing of it on bubblewrap's command line.
MAX_INLINE_ARGS = 4000
_EXEC_FROM_FD = ("import os, sys\n"
                 "fd = int(sys.argv[1])\n"
                 "with os.fdopen(fd, 'rb') as f:\n"
                 "    argv = f.read().split(b'\\0')[:-1]\n"
                 "os.execvp(argv[0], argv)\n")


def _memfd(items: list[str], name: str) -> int:
    fd = os.memfd_create(name, 0)  # not inheritable: pass_fds hands it over
    # One encode for all (os.fsencode's own codec, utf-8 with surrogateescape on Linux), not
    # one per argument: a job's bubblewrap options are about a hundred.
    data = "".join((a if type(a) is str else os.fsdecode(a)) + "\0"
                   for a in items).encode(sys.getfilesystemencoding(), "surrogateescape")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def long_command(argv: list[str], python: str) -> tuple[list[str], int | None]:
    """(command for bubblewrap, fd to pass or None): argv itself, or a shim
    that reads it from an inherited memfd when it is too long for bubblewrap."""
    if len(argv) <= MAX_INLINE_ARGS:
        return argv, None
    fd = _memfd(argv, "homie-job-argv")
    return [python, "-I", "-S", "-c", _EXEC_FROM_FD, str(fd)], fd


def args_fd(opts: list[str]) -> tuple[int, list[str]]:
    """(memfd, command) for `bwrap --args FD -- command...`: the options (with
    the job's environment) go into a memfd, so they do not appear on
    bubblewrap's command line, which every local user can read in /proc.
    bubblewrap takes the command itself only from its real command line."""
    sep = opts.index("--")
    return _memfd(opts[:sep], "homie-bwrap-args"), opts[sep + 1:]


def command(bwrap: str, argv: list[str], spec: Spec, python: str | None = None,
            disable_userns: bool = True, private: tuple[str, ...] = ()) -> list[str]:
    """The whole bwrap command line (options inline; see args_fd for jobs)."""
    return [bwrap, *options(argv, spec, python, disable_userns, private)]


def probe(mode: Mode, as_uid: int | None, python: str, private: tuple[str, ...] = ()) -> Status:
    """Can a sandbox start here, as the identity jobs will have? Tried once at
    start-up with the real command line, so what `up` and `doctor` say is
    what jobs will get."""
    if mode is Mode.OFF:
        return Status(False, "sandbox: off in the config")
    if not sys.platform.startswith("linux"):
        return Status(False, f"no sandbox on {sys.platform}: jobs run as a plain process")
    bwrap = bwrap_path()
    if bwrap is None:
        return Status(False, "bubblewrap is not installed (apt-get install bubblewrap)")
    for disable_userns in (True, False):
        try:
            argv = command(bwrap, [os.path.realpath(python), "-c", "pass"], Spec(), python=python,
                           disable_userns=disable_userns, private=private)
        except SandboxError as e:
            return Status(False, str(e))
        kw: dict[str, Any] = {}
        if as_uid is not None:
            kw = {"user": as_uid, "group": as_uid, "extra_groups": []}
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd="/", env={"PATH": SYSTEM_PATH},
                                stdin=subprocess.DEVNULL, **kw)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Status(False, f"bubblewrap cannot start: {e}")
        if cp.returncode == 0:
            return Status(True, "bwrap" + ("" if disable_userns else " (nested user namespaces allowed)"),
                          disable_userns)
        err = (cp.stderr.strip().splitlines() or [f"exit {cp.returncode}"])[-1]
    hint = ""
    if "ermission" in err or "not permitted" in err:
        hint = (" (unprivileged user namespaces are off: sysctl kernel.unprivileged_userns_clone=1,"
                " or an AppArmor profile for bwrap on Ubuntu 24.04)")
    return Status(False, f"bubblewrap cannot create a sandbox: {err}{hint}")
