"""The ssh side of the baselines: a plain login user, throw-away sshds inside namespace hosts,
and the ssh/scp/GNU parallel command lines to reach them.

The baselines log in as a dedicated user (`homie-bench`, shell /bin/sh, no rc files, its own
key authorized for itself), not as root: root's ~/.bashrc on a developer machine (pyenv init,
cargo env, ...) runs on every ssh command and would inflate every ssh figure. Each sshd is
key-only on port 2222 with a host key generated in a temp dir and a config of its own (-f),
accepts no environment from the client, and admits only that user; clients run as that user,
with `-F none` so that no user or system ssh_config applies.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from bench.util import BenchError, timed, wait_port

SSHD = "/usr/sbin/sshd"
PORT = 2222
USER = "homie-bench"
USER_HOME = Path("/var/lib/homie-bench")
USER_SHELL = "/bin/sh"
# Files a shell or ssh could read at login; the bench user must have none.
RC_FILES = (".profile", ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".shrc", ".kshrc",
            ".zshenv", ".zshrc", ".ssh/rc", ".ssh/environment", ".ssh/config")
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"

OPENSSH_TOOLS = {SSHD: "openssh-server", "ssh": "openssh-client", "scp": "openssh-client",
                 "ssh-keygen": "openssh-client"}
PARALLEL_TOOLS = {"parallel": "parallel"}


def _have(tool: str) -> bool:
    return bool(os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool))


def missing_tools(tools: dict | None = None) -> list[str]:
    tools = OPENSSH_TOOLS if tools is None else tools
    return sorted({pkg for tool, pkg in tools.items() if not _have(tool)})


def ensure_tools(log, tools: dict) -> str | None:
    """Install the packages behind `tools` ({command: package}) with apt-get if missing.
    None when ready, else why not (with what to install by hand)."""
    miss = missing_tools(tools)
    if not miss:
        return None
    if not shutil.which("apt-get"):
        return f"missing {', '.join(miss)} and no apt-get: install them by hand"
    log(f"installing {' '.join(miss)} with apt-get ...")
    # openssh-server's postinst would start a system sshd on port 22 in the root
    # namespace; forbid service starts during the install (policy-rc.d, exit 101).
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        cp = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *miss], env=env,
                            capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        return f"apt-get install {' '.join(miss)} failed: {e}"
    finally:
        if made_policy:
            policy.unlink(missing_ok=True)
    if cp.returncode != 0 or missing_tools(tools):
        return (f"apt-get install {' '.join(miss)} failed (exit {cp.returncode}): "
                f"{(cp.stderr or cp.stdout).strip()[-300:]}; install them by hand (sudo apt-get install "
                f"{' '.join(miss)})")
    return None


def ensure_openssh(log) -> str | None:
    return ensure_tools(log, OPENSSH_TOOLS)


def ensure_parallel(log) -> str | None:
    return ensure_tools(log, PARALLEL_TOOLS)


def passable_by_others(path: str | os.PathLike) -> bool:
    """Every directory down to path, and path itself, is o+x (another user can reach/run it)."""
    p = Path(os.path.realpath(path))
    try:
        return all(os.stat(d).st_mode & 0o001 for d in (p, *p.parents))
    except OSError:
        return False


def plain_python(prefer: str | None = None) -> str:
    """A plain interpreter for the baselines: a real binary (no pyenv shim, no venv), that the
    bench user can run. The venv's base interpreter when others can reach it, else the system's."""
    cands = [prefer, "/usr/bin/python3", "/usr/local/bin/python3"]
    for c in cands:
        if not c:
            continue
        real = os.path.realpath(c)
        if os.path.isfile(real) and passable_by_others(real) and "/shims/" not in real:
            return real
    raise BenchError("no plain python3 the bench user can run (tried "
                     f"{', '.join(c for c in cands if c)}): install python3 (apt-get install python3)")


class BenchUser:
    """The dedicated login of the baselines, made idempotently: `homie-bench`, shell /bin/sh,
    home /var/lib/homie-bench without rc files, an ed25519 key in ~/.ssh authorized for itself,
    password field `*` (no password login, but not "locked", which sshd would refuse)."""

    def __init__(self, log):
        self.log = log
        self.name = USER

    def ensure(self) -> "BenchUser":
        try:
            pw = pwd.getpwnam(USER)
        except KeyError:
            if not shutil.which("useradd") and not shutil.which("useradd", path="/usr/sbin:/sbin"):
                raise BenchError(f"no useradd to create the bench user {USER}: create it by hand "
                                 f"(shell {USER_SHELL}, home {USER_HOME})") from None
            self.log(f"creating the bench user {USER} (shell {USER_SHELL}, home {USER_HOME}, no rc files)")
            # --no-create-home: useradd -m would copy /etc/skel (.bashrc, .profile) into the home
            cp = subprocess.run([shutil.which("useradd", path="/usr/sbin:/sbin:" + os.environ.get("PATH", "")),
                                 "--system", "--no-create-home", "--home-dir", str(USER_HOME), "--shell", USER_SHELL,
                                 "--user-group", "--comment", "homie benchmark baselines", USER],
                                capture_output=True, text=True, timeout=60)
            if cp.returncode != 0:
                raise BenchError(f"useradd {USER} failed: {cp.stderr.strip()}") from None
            pw = pwd.getpwnam(USER)
        if pw.pw_shell != USER_SHELL or pw.pw_dir != str(USER_HOME):
            self.log(f"setting {USER}'s shell to {USER_SHELL} and home to {USER_HOME}")
            subprocess.run(["usermod", "--shell", USER_SHELL, "--home", str(USER_HOME), USER], check=True,
                           capture_output=True, timeout=60)
            pw = pwd.getpwnam(USER)
        # '*': no password can match, and unlike '!' sshd does not treat the account as locked
        subprocess.run(["usermod", "-p", "*", USER], check=True, capture_output=True, timeout=60)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home = USER_HOME
        ssh = USER_HOME / ".ssh"
        for d, mode in ((USER_HOME, 0o755), (ssh, 0o700)):
            d.mkdir(mode=mode, exist_ok=True)
            os.chown(d, self.uid, self.gid)
            d.chmod(mode)
        for rc in RC_FILES:
            p = USER_HOME / rc
            if p.exists() or p.is_symlink():
                self.log(f"removing {p}: the bench user has no rc files")
                p.unlink()
        self.key = ssh / "id_ed25519"
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{USER} (homie bench)",
                            "-f", str(self.key)], check=True, capture_output=True, timeout=30)
        auth = ssh / "authorized_keys"
        auth.write_text(Path(f"{self.key}.pub").read_text())
        for p, mode in ((self.key, 0o600), (Path(f"{self.key}.pub"), 0o644), (auth, 0o600)):
            os.chown(p, self.uid, self.gid)
            p.chmod(mode)
        return self

    def env(self) -> dict:
        """What a login of this user has: no venv, no pyenv, no HOMIE_*, PYTHON* or XDG_*."""
        return {"HOME": str(USER_HOME), "USER": USER, "LOGNAME": USER, "SHELL": USER_SHELL, "PATH": PLAIN_PATH,
                "LANG": "C.UTF-8"}

    def own(self, path: Path, mode: int = 0o700) -> Path:
        """mkdir path for this user (the client side's known_hosts and control sockets live there)."""
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, self.uid, self.gid)
        path.chmod(mode)
        return path


class Sshd:
    """One sshd in `server`'s namespace admitting only the bench user; clients run as that user."""

    def __init__(self, tmp: Path, server, client, user: BenchUser, client_dir: Path):
        self.tmp, self.server, self.client, self.user = tmp, server, client, user
        self.proc = None
        tmp.mkdir(parents=True, exist_ok=True)
        self.hostkey = tmp / "ssh_host_ed25519_key"
        self.userkey = user.key
        self.known = client_dir / "known_hosts"          # the user's, for this run's host keys
        self.control = client_dir / "cm-%C"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.hostkey)], check=True,
                       capture_output=True, timeout=30)
        self.config = tmp / "sshd_config"
        self.config.write_text(
            f"Port {PORT}\nListenAddress {server.ip}\nHostKey {self.hostkey}\nPidFile {tmp}/sshd.pid\n"
            "AuthorizedKeysFile .ssh/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nPermitRootLogin no\nAllowUsers {user.name}\nStrictModes yes\n"
            "UsePAM no\nPermitUserEnvironment no\nUseDNS no\nPrintMotd no\nPrintLastLog no\nX11Forwarding no\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100:30:200\nMaxSessions 100\n")

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        r = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"sshd rejects its config: {r.stderr.strip()}")
        self.proc = self.server.spawn(SSHD, "-D", "-e", "-f", str(self.config))
        wait_port(lambda: self.ssh_run(["true"], timeout=10).rc == 0, 20,
                  f"sshd on {self.server.ip}:{PORT} (log: {self.proc.log_path})")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    @property
    def login(self) -> str:
        return f"{self.user.name}@{self.server.ip}"

    def common(self, loglevel: str = "ERROR") -> list[str]:
        return ["-F", "none", "-o", f"UserKnownHostsFile={self.known}", "-o", "StrictHostKeyChecking=no",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"LogLevel={loglevel}",
                "-i", str(self.userkey)]

    def master_opts(self) -> list[str]:
        # %C (a hash of local host, remote host, port and user) keeps one socket per sshd
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}", "-o", "ControlPersist=120"]

    def ssh_base(self, master: bool = False) -> list[str]:
        """ssh and its options, without the destination (GNU parallel's --ssh)."""
        return ["ssh", *self.common(), *(self.master_opts() if master else []), "-p", str(PORT)]

    def ssh_argv(self, cmd: list[str], master: bool = False) -> list[str]:
        return [*self.ssh_base(master), self.login, *cmd]

    def run(self, argv, timeout: float = 60, **kw):
        """timed() as the bench user with a login's plain environment, in the client's namespace."""
        return timed(self.client, argv, timeout=timeout, user=self.user, **kw)

    def ssh_run(self, cmd: list[str], master: bool = False, timeout: float = 60):
        return self.run(self.ssh_argv(cmd, master), timeout=timeout)

    def scp_argv(self, src: str, dst: str) -> list[str]:
        return ["scp", "-q", *self.common(), "-P", str(PORT), src, f"{self.login}:{dst}"]

    def start_master(self) -> None:
        """A persistent master, up before anything is timed."""
        self.ssh_run(["true"], master=True, timeout=30).check("ssh ControlMaster set-up")
        self.run(["ssh", *self.common(), "-o", f"ControlPath={self.control}", "-O", "check", "-p", str(PORT),
                  self.login], timeout=10).check("ssh -O check (ControlMaster up)")

    def stop_master(self) -> None:
        try:
            self.run(["ssh", *self.common(), "-o", f"ControlPath={self.control}", "-O", "exit",
                      "-p", str(PORT), self.login], timeout=10)
        except BenchError:
            pass

    def cipher(self) -> str:
        r = self.run(["ssh", *self.common("DEBUG1"), "-p", str(PORT), self.login, "true"], timeout=20)
        for line in r.err.splitlines():
            if "kex: client->server cipher:" in line:
                return line.split("cipher:", 1)[1].split()[0]
        return "unknown"
