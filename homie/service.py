"""Install homie as an OS service: a systemd unit (system or user) or a launchd agent.

`homie service install|uninstall|status` (see homie/cli/service.py) are thin
wrappers around :func:`install`, :func:`uninstall` and :func:`status`.

The unit files live once, at the top of the source tree (homie.service,
packaging/homie-user.service, packaging/io.homie.agent.plist); homie/data/
holds symlinks to them, which the sdist and the wheel carry as plain files, so
they are package data. The files stay valid for `systemd-analyze verify`, so
rendering only swaps placeholders:

* ``/usr/local/bin/homie`` -> the absolute path of the running homie executable
  (or ``python -m homie`` when there is no console script);
* ``%h/.homie`` (user unit) / ``__HOMIE_HOME__`` (plist) -> HOMIE_HOME.

For tests and packaging every written path can be prefixed with a root
directory (``root=`` or HOMIE_SERVICE_ROOT, like DESTDIR) and every command
goes through an injectable ``run`` callable. With a root prefix and no ``run``,
commands are printed but not executed (staging must not touch the host).
HOMIE_SERVICE_PLATFORM ("linux" or "darwin") overrides platform detection.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from xml.sax.saxutils import escape as _xml_escape

from homie.errors import EXIT_USAGE, HomieError

SYSTEM = "system"  # /etc/systemd/system, runs as the dedicated user "homie"
USER = "user"  # ~/.config/systemd/user, runs as the invoking user
LAUNCHD = "launchd"  # ~/Library/LaunchAgents, runs as the logged-in user
MODES = (SYSTEM, USER, LAUNCHD)

UNIT_NAME = "homie.service"
LABEL = "io.homie.agent"
SERVICE_USER = "homie"
SYSTEM_HOME = "/var/lib/homie"  # StateDirectory=homie
TEMPLATES = {SYSTEM: "homie.service", USER: "homie-user.service", LAUNCHD: "io.homie.agent.plist"}

# Placeholders in the templates (real-looking where systemd must accept them).
TEMPLATE_EXE = "/usr/local/bin/homie"
TEMPLATE_USER_HOME = "%h/.homie"
TEMPLATE_MAC_HOME = "__HOMIE_HOME__"

# Where the system unit can't see an executable (ProtectHome=yes).
_HIDDEN_FROM_SYSTEM_UNIT = ("/home", "/root", "/run/user")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Out = Callable[[str], None]


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


# --- detection --------------------------------------------------------------------


def detect_platform(platform: str | None = None) -> str:
    """'linux' or 'darwin'; anything else is a HomieError."""
    p = (platform or os.environ.get("HOMIE_SERVICE_PLATFORM") or sys.platform).lower()
    if p.startswith("linux"):
        return "linux"
    if p in ("darwin", "macos", "mac"):
        return "darwin"
    raise HomieError(
        f"homie service supports Linux with systemd and macOS (launchd), not {p}; "
        "run `homie up --foreground` under your own supervisor instead",
        EXIT_USAGE,
    )


def resolve_mode(mode: str | None = None, *, platform: str | None = None, euid: int | None = None) -> str:
    """The mode to use: explicit (system/user/launchd), else system for root and user otherwise on Linux."""
    plat = detect_platform(platform)
    euid = os.geteuid() if euid is None else euid
    if plat == "darwin":
        if mode == SYSTEM:
            raise HomieError(
                "on macOS homie installs a per-user LaunchAgent only (jobs never run as root): "
                "run `homie service install` without --system",
                EXIT_USAGE,
            )
        return LAUNCHD
    if mode == LAUNCHD:
        raise HomieError("launchd agents exist on macOS only; use --system or --user", EXIT_USAGE)
    if mode in (SYSTEM, USER):
        return mode
    if mode is not None:
        raise HomieError(f"unknown service mode {mode!r} (system, user)", EXIT_USAGE)
    return SYSTEM if euid == 0 else USER


def service_root(root: str | os.PathLike | None = None) -> Path | None:
    r = root if root is not None else os.environ.get("HOMIE_SERVICE_ROOT") or None
    return Path(r).absolute() if r else None


def _prefixed(root: Path | None, path: str | os.PathLike) -> Path:
    path = Path(path)
    if root is None:
        return path
    return root / path.relative_to(path.anchor)


def homie_executable() -> list[str]:
    """argv that starts homie: the console script being run, else the one on PATH, else `python -m homie`."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and Path(argv0).name == "homie":
        found = shutil.which(argv0) if os.sep not in argv0 else argv0
        if found and os.access(found, os.X_OK):
            # abspath, not realpath: a symlink such as /usr/local/bin/homie survives upgrades.
            return [os.path.abspath(found)]
    found = shutil.which("homie")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "homie"]


def default_home(user_home: str | os.PathLike | None = None) -> Path:
    """HOMIE_HOME for user/launchd modes, made absolute (launchd expands nothing)."""
    env = os.environ.get("HOMIE_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path(user_home or Path.home()).absolute() / ".homie"


# --- rendering --------------------------------------------------------------------


def template(mode: str) -> str:
    """The packaged template for a mode (homie/data/...)."""
    return resources.files("homie").joinpath("data").joinpath(TEMPLATES[mode]).read_text(encoding="utf-8")


_NEEDS_QUOTES = re.compile(r"[\s\"'\\;]")


def _sd_word(word: str, *, exec_line: bool = False) -> str:
    """One word for a systemd unit line: specifiers escaped, quoted when needed."""
    if "\n" in word or "\r" in word:
        raise HomieError(f"path with a line break can't go in a unit file: {word!r}", EXIT_USAGE)
    w = word.replace("%", "%%")
    if exec_line:
        w = w.replace("$", "$$")
    if _NEEDS_QUOTES.search(w) or w == "":
        w = '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return w


def _under(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


def install_paths_under_home(exe_argv: Sequence[str], user_home: Path, exclude: Path | None = None) -> list[Path]:
    """Paths homie needs that live under the home directory (pipx, pip --user, venv, pyenv).

    The user unit hides the home directory (ProtectHome=tmpfs), so these are
    mounted back read-only.
    """
    import site

    cands: list[str] = [exe_argv[0], os.path.realpath(exe_argv[0])]
    cands += [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    cands.append(str(Path(__file__).resolve().parent.parent))  # where the homie package is imported from
    try:
        user_site = site.getusersitepackages()
        if user_site and _under(Path(__file__).resolve(), Path(user_site)):
            cands.append(user_site)
    except Exception:  # pragma: no cover - site quirks in embedded interpreters
        pass
    home = user_home.absolute()
    paths: list[Path] = []
    for c in cands:
        p = Path(c).absolute()
        if p != home and _under(p, home) and p.exists() and not (exclude and _under(p, exclude)):
            paths.append(p)
    # Drop duplicates and paths inside another listed path.
    paths = sorted(set(paths), key=lambda p: (len(p.parts), str(p)))
    out: list[Path] = []
    for p in paths:
        if not any(_under(p, q) for q in out):
            out.append(p)
    return out


def render(
    mode: str,
    exe_argv: Sequence[str],
    home: str | os.PathLike | None = None,
    *,
    user_home: str | os.PathLike | None = None,
    text: str | None = None,
) -> str:
    """The unit/plist for ``mode`` with the executable and HOMIE_HOME filled in.

    ``home`` is ignored for the system unit (its HOMIE_HOME is /var/lib/homie).
    For the user unit, ``home=None`` keeps the default %h/.homie.
    """
    if mode not in MODES:
        raise HomieError(f"unknown service mode {mode!r}", EXIT_USAGE)
    exe_argv = [str(a) for a in exe_argv]
    if not exe_argv or not os.path.isabs(exe_argv[0]):
        raise HomieError(f"the homie executable must be an absolute path, got {exe_argv!r}", EXIT_USAGE)
    text = template(mode) if text is None else text
    if mode == LAUNCHD:
        if home is None:
            home = default_home(user_home)
        args = "".join(f"<string>{_xml_escape(a)}</string>\n\t\t" for a in exe_argv).rstrip("\n\t")
        text = text.replace(f"<string>{TEMPLATE_EXE}</string>", args, 1)
        return text.replace(TEMPLATE_MAC_HOME, _xml_escape(str(Path(home).absolute())))

    lines = []
    home_s = None
    if mode == USER and home is not None:
        h = Path(home).expanduser().absolute()
        uh = Path(user_home or Path.home()).absolute()
        if h != uh / ".homie":
            home_s = str(h)
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        exec_line = body.startswith("Exec")
        if body.startswith("ExecStart=") and TEMPLATE_EXE in body:
            quoted = " ".join(_sd_word(a, exec_line=True) for a in exe_argv)
            body = body.replace(TEMPLATE_EXE, quoted, 1)
        if home_s is not None and not body.lstrip().startswith("#") and TEMPLATE_USER_HOME in body:
            if body == f"Environment=HOMIE_HOME={TEMPLATE_USER_HOME}":
                body = "Environment=" + _sd_word(f"HOMIE_HOME={home_s}")
            else:
                body = body.replace(TEMPLATE_USER_HOME, _sd_word(home_s, exec_line=exec_line))
        lines.append(body + ("\n" if line.endswith("\n") else ""))
        if mode == USER and body.startswith("BindPaths="):
            uh = Path(user_home or Path.home()).absolute()
            excl = Path(home_s) if home_s else uh / ".homie"
            extra = install_paths_under_home(exe_argv, uh, exclude=excl)
            if extra:
                lines.append("# Added by `homie service install`: homie itself lives under the home directory.\n")
                lines.append("BindReadOnlyPaths=" + " ".join(_sd_word(f"-{p}") for p in extra) + "\n")
    return "".join(lines)


# --- planning ---------------------------------------------------------------------


def unit_path(mode: str, *, root: str | os.PathLike | None = None, user_home: str | os.PathLike | None = None) -> Path:
    """Where the unit/plist goes, root prefix included."""
    uh = Path(user_home or Path.home()).absolute()
    if mode == SYSTEM:
        p: Path = Path("/etc/systemd/system") / UNIT_NAME
    elif mode == USER:
        cfg = os.environ.get("XDG_CONFIG_HOME")
        base = Path(cfg) if cfg and os.path.isabs(cfg) and user_home is None else uh / ".config"
        p = base / "systemd" / "user" / UNIT_NAME
    elif mode == LAUNCHD:
        p = uh / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    else:
        raise HomieError(f"unknown service mode {mode!r}", EXIT_USAGE)
    return _prefixed(service_root(root), p)


def _systemctl(mode: str, *args: str) -> list[str]:
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


def _uid(uid: int | None) -> int:
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
        plan.commands = [Command(_systemctl(mode, "daemon-reload")),
                         Command(_systemctl(mode, "enable", "--now", UNIT_NAME))]
        plan.notes.append(
            f"state: {SYSTEM_HOME} (created by systemd); let people drive the daemon with "
            f"`usermod -aG {SERVICE_USER} NAME` and HOMIE_HOME={SYSTEM_HOME}"
        )
    elif mode == USER:
        h = Path(home).expanduser().absolute() if home else default_home(user_home)
        plan.content = render(USER, exe_argv, h, user_home=user_home)
        plan.dirs.append(_prefixed(rootp, h))
        plan.commands = [Command(_systemctl(mode, "daemon-reload")),
                         Command(_systemctl(mode, "enable", "--now", UNIT_NAME))]
        plan.notes.append("to keep homie running while you are logged out: loginctl enable-linger $USER")
    else:
        h = Path(home).expanduser().absolute() if home else default_home(user_home)
        plan.content = render(LAUNCHD, exe_argv, h, user_home=user_home)
        plan.dirs += [_prefixed(rootp, h), _prefixed(rootp, h / "logs")]
        domain = f"gui/{_uid(uid)}"
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
        plan.pre_commands = [Command(_systemctl(mode, "disable", "--now", UNIT_NAME), check=False)]
        plan.commands = [Command(_systemctl(mode, "daemon-reload"))]
        if mode == SYSTEM:
            plan.notes.append(
                f"kept the user {SERVICE_USER} and the state in {SYSTEM_HOME}; "
                f"remove them with: userdel {SERVICE_USER} && rm -rf {SYSTEM_HOME}"
            )
    else:
        plan.pre_commands = [Command(["launchctl", "bootout", f"gui/{_uid(uid)}/{LABEL}"], check=False)]
    return plan


# --- executing --------------------------------------------------------------------


def default_runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def _need_root(mode: str, action: str, root: Path | None, euid: int | None) -> None:
    euid = os.geteuid() if euid is None else euid
    if mode == SYSTEM and root is None and euid != 0:
        raise HomieError(f"needs root: sudo homie service {action} --system")


def _need_systemd(mode: str, root: Path | None, run: Runner | None) -> None:
    # Only when really touching this host: a staging root or an injected runner skip it.
    if mode == LAUNCHD or root is not None or run is not None:
        return
    if shutil.which("systemctl") is None:
        raise HomieError("systemctl not found: this Linux does not use systemd; "
                         "run `homie up --foreground` under your own supervisor")
    if not os.path.isdir("/run/systemd/system"):
        raise HomieError("systemd is not running here (no /run/systemd/system); "
                         "run `homie up --foreground` under your own supervisor")


def _exec(cmds: Sequence[Command], run: Runner | None, root: Path | None, out: Out) -> None:
    for cmd in cmds:
        if run is None and root is not None:
            out(f"skipped (HOMIE_SERVICE_ROOT is set): {cmd}")
            continue
        try:
            res = (run or default_runner)(cmd.argv)
        except FileNotFoundError:
            if cmd.check:
                raise HomieError(f"command not found: {cmd.argv[0]} (needed for: {cmd})") from None
            out(f"skipped ({cmd.argv[0]} not found): {cmd}")
            continue
        rc = getattr(res, "returncode", 0)
        if rc != 0:
            detail = ((getattr(res, "stderr", "") or getattr(res, "stdout", "") or "").strip().splitlines() or [""])[-1]
            if cmd.check:
                raise HomieError(f"command failed (exit {rc}): {cmd}" + (f": {detail}" if detail else ""))
            out(f"ran: {cmd} (exit {rc}, ignored)")
        else:
            out(f"ran: {cmd}")


def _write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(content)
    # Unit files hold no secrets; systemd/launchd and `status` must be able to read them.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _print_dry_run(plan: Plan, out: Out, action: str) -> None:
    out(f"# dry run: homie service {action} ({plan.mode}); nothing is changed")
    for c in plan.pre_commands:
        out(f"would run: {c}")
    for d in plan.dirs:
        out(f"would create: {d}")
    if plan.content is not None:
        out(f"would write: {plan.path}")
        out(f"----- {plan.path} -----")
        out(plan.content.rstrip("\n"))
        out("----- end -----")
    else:
        out(f"would remove: {plan.path}")
    for c in plan.commands:
        out(f"would run: {c}")
    for n in plan.notes:
        out(f"note: {n}")


def install(
    mode: str | None = None,
    *,
    dry_run: bool = False,
    root: str | os.PathLike | None = None,
    run: Runner | None = None,
    out: Out = print,
    platform: str | None = None,
    exe: Sequence[str] | str | None = None,
    home: str | os.PathLike | None = None,
    user_home: str | os.PathLike | None = None,
    uid: int | None = None,
    euid: int | None = None,
) -> Plan:
    """Render and write the unit/plist, create what it needs, and enable + start it.

    mode: "system", "user" (Linux) or None (system as root, user otherwise;
    always the LaunchAgent on macOS). Returns the plan it carried out.
    """
    rootp = service_root(root)
    plan = plan_install(mode, root=rootp, platform=platform, exe=exe, home=home,
                        user_home=user_home, uid=uid, euid=euid)
    if dry_run:
        _print_dry_run(plan, out, "install")
        return plan
    _need_root(plan.mode, "install", rootp, euid)
    _need_systemd(plan.mode, rootp, run)
    _exec(plan.pre_commands, run, rootp, out)
    for d in plan.dirs:
        old = os.umask(0o077)
        try:
            d.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
    assert plan.content is not None
    try:
        unchanged = plan.path.read_text(encoding="utf-8") == plan.content
    except OSError:
        unchanged = False
    _write(plan.path, plan.content)
    out(f"{'unchanged' if unchanged else 'wrote'} {plan.path}")
    _exec(plan.commands, run, rootp, out)
    for n in plan.notes:
        out(f"note: {n}")
    return plan


def uninstall(
    mode: str | None = None,
    *,
    dry_run: bool = False,
    root: str | os.PathLike | None = None,
    run: Runner | None = None,
    out: Out = print,
    platform: str | None = None,
    user_home: str | os.PathLike | None = None,
    uid: int | None = None,
    euid: int | None = None,
) -> Plan:
    """Stop and disable the service and remove its unit/plist (state is kept)."""
    rootp = service_root(root)
    plan = plan_uninstall(mode, root=rootp, platform=platform, user_home=user_home, uid=uid, euid=euid)
    if dry_run:
        _print_dry_run(plan, out, "uninstall")
        return plan
    _need_root(plan.mode, "uninstall", rootp, euid)
    if not plan.path.exists():
        out(f"not installed: {plan.path}")
        return plan
    _need_systemd(plan.mode, rootp, run)
    _exec(plan.pre_commands, run, rootp, out)
    plan.path.unlink()
    out(f"removed {plan.path}")
    _exec(plan.commands, run, rootp, out)
    for n in plan.notes:
        out(f"note: {n}")
    return plan


def status(
    mode: str | None = None,
    *,
    root: str | os.PathLike | None = None,
    run: Runner | None = None,
    out: Out = print,
    platform: str | None = None,
    user_home: str | os.PathLike | None = None,
    uid: int | None = None,
) -> dict[str, dict[str, object]]:
    """Print, per mode, whether the unit is installed and what the service manager says.

    Without a mode, Linux reports both the system and the user unit. Missing
    systemctl/launchctl is reported, not an error. Returns {mode: {...}}.
    """
    rootp = service_root(root)
    plat = detect_platform(platform)
    if mode is not None:
        modes = [resolve_mode(mode, platform=plat, euid=1)]
    else:
        modes = [LAUNCHD] if plat == "darwin" else [SYSTEM, USER]
    runner = run or default_runner
    result: dict[str, dict[str, object]] = {}
    for m in modes:
        path = unit_path(m, root=rootp, user_home=user_home)
        installed = path.exists()
        if m == LAUNCHD:
            argv = ["launchctl", "print", f"gui/{_uid(uid)}/{LABEL}"]
        else:
            argv = _systemctl(m, "is-active", UNIT_NAME)
        try:
            res = runner(argv)
            text = (getattr(res, "stdout", "") or "").strip()
            rc = getattr(res, "returncode", 0)
            err = (getattr(res, "stderr", "") or "").strip()
            if m == LAUNCHD:
                st = re.search(r"^\s*state = (.+)$", text, re.M)
                state = st.group(1).strip() if st else ("loaded" if rc == 0 else "not loaded")
            else:
                why = ": " + err.splitlines()[-1] if err else ""
                state = text.splitlines()[0] if text else f"unknown (exit {rc}{why})"
        except FileNotFoundError:
            state = f"unknown ({argv[0]} not found)"
        except OSError as e:
            state = f"unknown ({argv[0]}: {e.strerror})"
        out(f"{m}: {path} {'installed' if installed else 'not installed'}; {shlex.join(argv)}: {state}")
        result[m] = {"path": str(path), "installed": installed, "state": state}
    return result
