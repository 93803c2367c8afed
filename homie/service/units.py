"""The service's unit files: which mode fits this machine, where the file goes, what it says.

Pure rendering and paths (homie.service.plan decides what to do with them).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
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


def prefixed(root: Path | None, path: str | os.PathLike) -> Path:
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
    cands.append(str(Path(__file__).resolve().parents[2]))  # where the homie package is imported from
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


# --- paths ------------------------------------------------------------------------


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
    return prefixed(service_root(root), p)
