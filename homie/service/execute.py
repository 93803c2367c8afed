"""Carrying out a Plan on this host: the service manager's commands, through an injectable `run`.

With a root prefix (root= or HOMIE_SERVICE_ROOT) and no `run`, commands are printed,
not executed: staging must not touch the host.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from homie.errors import HomieError
from homie.service.plan import Command, Plan, own_uid, plan_install, plan_uninstall, systemctl
from homie.service.units import (
    LABEL,
    LAUNCHD,
    SYSTEM,
    UNIT_NAME,
    USER,
    detect_platform,
    resolve_mode,
    service_root,
    unit_path,
)

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
Out = Callable[[str], None]


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
    # Unit files hold no secrets; systemd/launchd and `status` must be able to read them.
    from homie.files.atomic import atomic_write  # homie.files is heavy: only when writing

    atomic_write(path, content.encode("utf-8"), mode=0o644)


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
            argv = ["launchctl", "print", f"gui/{own_uid(uid)}/{LABEL}"]
        else:
            argv = systemctl(m, "is-active", UNIT_NAME)
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
