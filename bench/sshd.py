"""A throw-away sshd inside a namespace host, and the ssh/scp command lines to reach it.

Key-only auth on port 2222, host and user keys generated in a temp dir, a
config of its own (-f), no environment accepted from the client, and clients
started with `-F none` so no user or system ssh_config applies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.util import BenchError, timed, wait_port

SSHD = "/usr/sbin/sshd"
PORT = 2222


def missing_tools() -> list[str]:
    tools = {SSHD: "openssh-server", "ssh": "openssh-client", "scp": "openssh-client",
             "ssh-keygen": "openssh-client"}
    miss = []
    for tool, pkg in tools.items():
        if not (os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool)):
            miss.append(pkg)
    return sorted(set(miss))


def ensure_openssh(log) -> str | None:
    """Install openssh-server/-client with apt-get if missing. None when ready, else why not."""
    miss = missing_tools()
    if not miss:
        return None
    if not shutil.which("apt-get"):
        return f"missing {', '.join(miss)} and no apt-get: install them by hand"
    log(f"installing {' '.join(miss)} with apt-get ...")
    # The package's postinst would start a system sshd on port 22 in the root
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
    if cp.returncode != 0 or missing_tools():
        return (f"apt-get install {' '.join(miss)} failed (exit {cp.returncode}): "
                f"{(cp.stderr or cp.stdout).strip()[-300:]}")
    return None


class Sshd:
    def __init__(self, tmp: Path, server, client):
        self.tmp, self.server, self.client = tmp, server, client
        self.proc = None
        tmp.mkdir(parents=True, exist_ok=True)
        self.hostkey = tmp / "ssh_host_ed25519_key"
        self.userkey = tmp / "id_ed25519"
        self.known = tmp / "known_hosts"
        self.control = tmp / "cm-%C"
        for key in (self.hostkey, self.userkey):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                           capture_output=True, timeout=30)
        (tmp / "authorized_keys").write_text(Path(f"{self.userkey}.pub").read_text())
        (tmp / "authorized_keys").chmod(0o600)
        self.config = tmp / "sshd_config"
        self.config.write_text(
            f"Port {PORT}\nListenAddress {server.ip}\nHostKey {self.hostkey}\nPidFile {tmp}/sshd.pid\n"
            f"AuthorizedKeysFile {tmp}/authorized_keys\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            "PermitUserEnvironment no\nUseDNS no\nPrintMotd no\nPrintLastLog no\nX11Forwarding no\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\n")

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        r = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise BenchError(f"sshd rejects its config: {r.stderr.strip()}")
        self.proc = self.server.spawn(SSHD, "-D", "-e", "-f", str(self.config))
        wait_port(lambda: self.ssh_run(["true"], timeout=10).rc == 0, 20,
                  f"sshd on {self.server.ip}:{PORT} (log: {self.proc.log_path})")

    def common(self, loglevel: str = "ERROR") -> list[str]:
        return ["-F", "none", "-o", f"UserKnownHostsFile={self.known}", "-o", "StrictHostKeyChecking=no",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", f"LogLevel={loglevel}",
                "-i", str(self.userkey)]

    def ssh_argv(self, cmd: list[str], master: bool = False) -> list[str]:
        extra = (["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control}", "-o", "ControlPersist=60"]
                 if master else [])
        return ["ssh", *self.common(), *extra, "-p", str(PORT), f"root@{self.server.ip}", *cmd]

    def ssh_run(self, cmd: list[str], master: bool = False, timeout: float = 60):
        return timed(self.client, self.ssh_argv(cmd, master), timeout=timeout)

    def scp_argv(self, src: str, dst: str) -> list[str]:
        return ["scp", "-q", *self.common(), "-P", str(PORT), src, f"root@{self.server.ip}:{dst}"]

    def stop_master(self) -> None:
        try:
            timed(self.client, ["ssh", *self.common(), "-o", f"ControlPath={self.control}", "-O", "exit",
                                "-p", str(PORT), f"root@{self.server.ip}"], timeout=10)
        except BenchError:
            pass

    def cipher(self) -> str:
        r = timed(self.client, ["ssh", *self.common("DEBUG1"), "-p", str(PORT),
                                f"root@{self.server.ip}", "true"], timeout=20)
        for line in r.err.splitlines():
            if "kex: client->server cipher:" in line:
                return line.split("cipher:", 1)[1].split()[0]
        return "unknown"
