"""What `homie service install|uninstall` would do, as a Plan: nothing here touches the host.

A Plan lists, in order, the commands to run before writing, the directories to create,
the file to write or remove and the commands to run after; homie.service.execute carries
it out, or prints it for --dry-run.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from homie.errors import EXIT_USAGE, HomieError
from homie.service.units import (
    LABEL,
    LAUNCHD,
    SERVICE_USER,
    SYSTEM,
    SYSTEM_HOME,
    UNIT_NAME,
    USER,
    default_home,
    homie_executable,
    prefixed,
    render,
    resolve_mode,
    service_root,
    unit_path,
)

# Where the system unit can't see an executable (ProtectHome=yes).
_HIDDEN_FROM_SYSTEM_UNIT = ("/home", "/root", "/run/user")


@dataclass
class Command:
    argv: list[str]
    check: bool = True  # False: a failure is reported but not fatal

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Plan:
    """What install/uninstall does, in order: create dirs, write/remove the file, run commands."""

    mode: str
    path: Path  # destination, root prefix included
    content: str | None = None  # rendered file (install); None for uninstall
    pre_commands: list[Command] = field(default_factory=list)  # before writing (useradd)
    commands: list[Command] = field(default_factory=list)  # after writing/removing
    dirs: list[Path] = field(default_factory=list)  # created 0700 before writing
    notes: list[str] = field(default_factory=list)


def systemctl(mode: str, *args: str) -> list[str]:
    return ["systemctl", "--user", *args] if mode == USER else ["systemctl", *args]


def _user_exists(name: str, root: Path | None) -> bool:
    if root is not None:
        passwd = root / "etc" / "passwd"
        try:
            return any(line.split(":", 1)[0] == name for line in passwd.read_text().splitlines())
        except OSError:
            return False
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _existing_groups(names: Sequence[str]) -> list[str]:
    import grp

    out = []
    for n in names:
        try:
            grp.getgrnam(n)
            out.append(n)
        except KeyError:
            pass
    return out


def useradd_command(root: Path | None = None) -> Command:
    """Creates the dedicated system user; GPU device groups it joins if they exist."""
    nologin = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if os.path.exists(s)), "/usr/sbin/nologin")
    argv = ["useradd", "--system", "--user-group", "--home-dir", SYSTEM_HOME, "--no-create-home",
            "--shell", nologin, "--comment", "homie daemon"]
    groups = _existing_groups(["video", "render"]) if root is None else []
    if groups:
        # /dev/dri/* and some /dev/nvidia* nodes are group video/render, mode 0660.
        argv += ["--groups", ",".join(groups)]
    if root is not None:
        argv += ["--root", str(root)]
    return Command(argv + [SERVICE_USER])


def own_uid(uid: int | None) -> int:
    return os.getuid() if uid is None else uid


def _check_exe_visible(mode: str, exe_argv: Sequence[str]) -> None:
    if mode != SYSTEM:
        return
    for p in {exe_argv[0], os.path.realpath(exe_argv[0])}:
        if any(p == h or p.startswith(h + "/") for h in _HIDDEN_FROM_SYSTEM_UNIT):
            raise HomieError(
                f"homie is installed under a home directory ({p}), which the system service can't see "
                "(ProtectHome=yes): install homie system-wide (e.g. into /opt/homie or /usr/local) "
                "or use `homie service install --user`",
                EXIT_USAGE,
            )


def plan_install(
    mode: str | None = None,
    *,
    root: str | os.PathLike | None = None,
    platform: str | None = None,
    exe: Sequence[str] | str | None = None,
    home: str | os.PathLike | None = None,
    user_home: str | os.PathLike | None = None,
    uid: int | None = None,
    euid: int | None = None,
) -> Plan:
    rootp = service_root(root)
    euid = os.geteuid() if euid is None else euid
    mode = resolve_mode(mode, platform=platform, euid=euid)
    exe_argv = [exe] if isinstance(exe, str) else list(exe or homie_executable())
    _check_exe_visible(mode, exe_argv)
    if mode in (USER, LAUNCHD) and euid == 0 and rootp is None:
        raise HomieError(
            "refusing to install a per-user service for root: jobs must never run as root; "
            "use `sudo homie service install --system` (runs as the user homie)",
            EXIT_USAGE,
        )
    path = unit_path(mode, root=rootp, user_home=user_home)
    plan = Plan(mode=mode, path=path)
    if mode == SYSTEM:
        plan.content = render(SYSTEM, exe_argv)
        if not _user_exists(SERVICE_USER, rootp):
            plan.pre_commands.append(useradd_command(rootp))
        plan.commands = [Command(systemctl(mode, "daemon-reload")),
                         Command(systemctl(mode, "enable", "--now", UNIT_NAME))]
        plan.notes.append(
            f"state: {SYSTEM_HOME} (created by systemd); let people drive the daemon with "
            f"`usermod -aG {SERVICE_USER} NAME` and HOMIE_HOME={SYSTEM_HOME}"
        )
    elif mode == USER:
        h = Path(home).expanduser().absolute() if home else default_home(user_home)
        plan.content = render(USER, exe_argv, h, user_home=user_home)
        plan.dirs.append(prefixed(rootp, h))
        plan.commands = [Command(systemctl(mode, "daemon-reload")),
                         Command(systemctl(mode, "enable", "--now", UNIT_NAME))]
        plan.notes.append("to keep homie running while you are logged out: loginctl enable-linger $USER")
    else:
        h = Path(home).expanduser().absolute() if home else default_home(user_home)
        plan.content = render(LAUNCHD, exe_argv, h, user_home=user_home)
        plan.dirs += [prefixed(rootp, h), prefixed(rootp, h / "logs")]
        domain = f"gui/{own_uid(uid)}"
        plan.commands = [
            # A re-install replaces a loaded agent; bootout fails harmlessly when none is loaded.
            Command(["launchctl", "bootout", f"{domain}/{LABEL}"], check=False),
            # Undo an earlier `launchctl disable`, which would make bootstrap fail.
            Command(["launchctl", "enable", f"{domain}/{LABEL}"], check=False),
            Command(["launchctl", "bootstrap", domain, str(path)]),
        ]
    return plan


def plan_uninstall(
    mode: str | None = None,
    *,
    root: str | os.PathLike | None = None,
    platform: str | None = None,
    user_home: str | os.PathLike | None = None,
    uid: int | None = None,
    euid: int | None = None,
) -> Plan:
    rootp = service_root(root)
    euid = os.geteuid() if euid is None else euid
    mode = resolve_mode(mode, platform=platform, euid=euid)
    plan = Plan(mode=mode, path=unit_path(mode, root=rootp, user_home=user_home))
    if mode in (SYSTEM, USER):
        # Stop first (KillMode=control-group takes the jobs with it), then forget the unit.
        plan.pre_commands = [Command(systemctl(mode, "disable", "--now", UNIT_NAME), check=False)]
        plan.commands = [Command(systemctl(mode, "daemon-reload"))]
        if mode == SYSTEM:
            plan.notes.append(
                f"kept the user {SERVICE_USER} and the state in {SYSTEM_HOME}; "
                f"remove them with: userdel {SERVICE_USER} && rm -rf {SYSTEM_HOME}"
            )
    else:
        plan.pre_commands = [Command(["launchctl", "bootout", f"gui/{own_uid(uid)}/{LABEL}"], check=False)]
    return plan
