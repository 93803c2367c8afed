"""homie service: unit files (systemd-analyze), the plist, and install/uninstall/status."""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from homie import service as svc
from homie.errors import HomieError

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "homie" / "data"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt install systemd) - can't check the units"
)
EXE = "/bin/true"  # an existing absolute path: verify checks that ExecStart is executable
# 1.7 before jobs were sandboxed; 3.0 now. The rise is the room the job sandbox
# needs: user/mnt/pid/ipc/uts/net/cgroup namespaces (+0.9), @mount (+0.2), and no
# ProtectKernelTunables/ProtectKernelLogs (+0.4), whose mounts over /proc make the
# kernel refuse the sandbox its own /proc. systemd-analyze scores the daemon only;
# the jobs, which are what the owner must be protected from, now run in bubblewrap.
MAX_EXPOSURE = 3.0


class Recorder:
    """Injectable runner: records argv, answers like a successful command."""

    def __init__(self, stdout: str = "", returncode: int = 0):
        self.calls: list[list[str]] = []
        self.stdout = stdout
        self.returncode = returncode

    def __call__(self, argv):
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), self.returncode, self.stdout, "")


def _analyze(*args: str, cwd: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # --user needs a runtime dir even offline; point it at a private temp one.
    rt = tmp / "xdg-runtime"
    rt.mkdir(mode=0o700, exist_ok=True)
    env["XDG_RUNTIME_DIR"] = str(rt)
    env["SYSTEMD_LOG_COLOR"] = "0"
    env["SYSTEMD_PAGER"] = ""
    return subprocess.run([SYSTEMD_ANALYZE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _rendered_unit(tmp_path: Path, mode: str) -> Path:
    d = tmp_path / "units"
    d.mkdir(exist_ok=True)
    p = d / "homie.service"
    p.write_text(svc.render(mode, [EXE]))
    return p


# --- the files ------------------------------------------------------------------


# One source each, at the top level; homie/data/ (the package data) holds
# relative symlinks to them, which the sdist and the wheel carry as plain files.
SOURCES = {
    "homie.service": "homie.service",
    "homie-user.service": "packaging/homie-user.service",
    "io.homie.agent.plist": "packaging/io.homie.agent.plist",
}


@pytest.mark.parametrize("packaged,source", SOURCES.items())
def test_package_data_links_to_the_single_source(packaged, source):
    link = DATA / packaged
    assert link.is_symlink() and link.resolve() == (REPO / source).resolve(), (
        f"homie/data/{packaged} must be a symlink to {source} (edit {source}; there is no second copy)"
    )
    assert sorted(p.name for p in DATA.iterdir()) == sorted(SOURCES)


@pytest.mark.parametrize("packaged,source", SOURCES.items())
def test_the_installed_package_serves_the_source(packaged, source):
    res = resources.files("homie").joinpath("data").joinpath(packaged)
    assert res.read_bytes() == (REPO / source).read_bytes()


def test_sdist_and_wheel_carry_the_sources_as_plain_files(tmp_path):
    """What `pip install .` and PyPI users get: build both from a copy of the
    tree (offline: setuptools and wheel are in the test extra)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "homie.service"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("homie", "packaging"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=ignore)
    out = tmp_path / "dist"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(out)!r})"],
                       cwd=src, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(out), str(src)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    with tarfile.open(sdist) as tar, zipfile.ZipFile(wheel) as whl:
        top = tar.getnames()[0].split("/")[0]
        for packaged, source in SOURCES.items():
            want = (REPO / source).read_bytes()
            member = tar.getmember(f"{top}/homie/data/{packaged}")
            assert member.isfile(), f"the sdist holds homie/data/{packaged} as a link"
            assert tar.extractfile(member).read() == want, packaged
            assert whl.read(f"homie/data/{packaged}") == want, packaged


def test_templates_load_as_package_data():
    for mode in svc.MODES:
        assert svc.TEMPLATE_EXE in svc.template(mode)


@needs_analyze
@pytest.mark.parametrize("mode", [svc.SYSTEM, svc.USER])
def test_systemd_analyze_verify(tmp_path, mode):
    unit = _rendered_unit(tmp_path, mode)
    args = ["--user", "verify", unit.name] if mode == svc.USER else ["verify", unit.name]
    res = _analyze(*args, cwd=unit.parent, tmp=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    # verify also reports unknown/misspelled keys only as warnings: none allowed.
    noise = [line for line in res.stderr.splitlines() if "homie.service" in line]
    assert not noise, res.stderr


@needs_analyze
def test_checked_in_system_unit_verifies_apart_from_the_placeholder_binary(tmp_path):
    res = _analyze("verify", str(REPO / "homie.service"), cwd=tmp_path, tmp=tmp_path)
    complaints = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    # The only acceptable complaint is the placeholder /usr/local/bin/homie not existing here.
    assert all(svc.TEMPLATE_EXE in line for line in complaints), complaints


@needs_analyze
def test_system_unit_security_exposure(tmp_path):
    unit = _rendered_unit(tmp_path, svc.SYSTEM)
    res = _analyze("security", "--offline=yes", unit.name, cwd=unit.parent, tmp=tmp_path)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, res.stdout


def test_system_unit_essentials():
    text = svc.template(svc.SYSTEM)
    keys = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith(("#", "[")) and "=" in line
    )
    assert keys["User"] == "homie"
    assert keys["StateDirectory"] == "homie"
    assert "HOMIE_HOME=/var/lib/homie" in text
    assert keys["KillMode"] == "control-group"
    assert keys["OOMPolicy"] == "continue"
    assert keys["UMask"] == "0077"
    assert keys["NoNewPrivileges"] == "yes"
    assert keys["CapabilityBoundingSet"] == ""
    assert keys["PrivateDevices"] == "no"
    assert keys["MemoryDenyWriteExecute"] == "no"
    assert "char-drm rw" in text and "char-nvidia-frontend rw" in text


def test_plist_parses_with_required_keys(tmp_path):
    for text in (svc.template(svc.LAUNCHD), svc.render(svc.LAUNCHD, [EXE], tmp_path / "h")):
        p = plistlib.loads(text.encode())
        assert p["Label"] == "io.homie.agent"
        assert p["ProgramArguments"][1:] == ["up", "--foreground"]
        assert p["RunAtLoad"] is True
        assert p["KeepAlive"] == {"SuccessfulExit": False}
        assert p["ProcessType"] == "Background"
        assert p["Nice"] == 10
        assert p["LowPriorityIO"] is True
        assert p["Umask"] == 0o077
        assert p["AbandonProcessGroup"] is False
        assert isinstance(p["ExitTimeOut"], int)
        assert "HOMIE_HOME" in p["EnvironmentVariables"]
        assert p["StandardOutPath"].endswith("/logs/homie.out.log")
        assert p["StandardErrorPath"].endswith("/logs/homie.err.log")
    assert p["ProgramArguments"][0] == EXE
    assert p["EnvironmentVariables"]["HOMIE_HOME"] == str(tmp_path / "h")
    assert p["StandardOutPath"] == str(tmp_path / "h" / "logs" / "homie.out.log")


# --- rendering ------------------------------------------------------------------


def test_render_quotes_awkward_paths(tmp_path):
    text = svc.render(svc.USER, ["/opt/my homie/bin/homie"], "/data/50%/homie home", user_home=tmp_path)
    assert 'ExecStart="/opt/my homie/bin/homie" up --foreground' in text
    assert 'Environment="HOMIE_HOME=/data/50%%/homie home"' in text
    assert 'BindPaths="/data/50%%/homie home"' in text
    text = svc.render(svc.LAUNCHD, ["/usr/bin/python3", "-m", "homie"], "/Users/a&b/.homie")
    p = plistlib.loads(text.encode())
    assert p["ProgramArguments"] == ["/usr/bin/python3", "-m", "homie", "up", "--foreground"]
    assert p["EnvironmentVariables"]["HOMIE_HOME"] == "/Users/a&b/.homie"


def test_render_user_unit_keeps_default_home(tmp_path):
    text = svc.render(svc.USER, [EXE], tmp_path / ".homie", user_home=tmp_path)
    assert "Environment=HOMIE_HOME=%h/.homie" in text
    assert "ExecStart=/bin/true up --foreground" in text


def test_render_user_unit_binds_install_under_home(tmp_path):
    exe = tmp_path / ".local" / "bin" / "homie"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    text = svc.render(svc.USER, [str(exe)], user_home=tmp_path)
    assert f'BindReadOnlyPaths=-{exe}' in text


def test_render_rejects_relative_exe():
    with pytest.raises(HomieError):
        svc.render(svc.SYSTEM, ["homie"])


# --- dry run --------------------------------------------------------------------


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "mode,platform,euid,expect_path,expect_cmds",
    [
        (svc.SYSTEM, "linux", 0, "etc/systemd/system/homie.service",
         ["systemctl daemon-reload", "systemctl enable --now homie.service"]),
        (svc.USER, "linux", 1000, ".config/systemd/user/homie.service",
         ["systemctl --user daemon-reload", "systemctl --user enable --now homie.service"]),
        (None, "darwin", 501, "Library/LaunchAgents/io.homie.agent.plist",
         ["launchctl bootstrap gui/501 "]),
    ],
)
def test_dry_run_prints_file_and_commands_and_writes_nothing(
    tmp_path, monkeypatch, mode, platform, euid, expect_path, expect_cmds
):
    monkeypatch.delenv("HOMIE_HOME", raising=False)
    monkeypatch.delenv("HOMIE_SERVICE_ROOT", raising=False)
    root = tmp_path / "root"
    home = tmp_path / "home"
    root.mkdir()
    home.mkdir()
    lines: list[str] = []
    run = Recorder()
    plan = svc.install(mode, dry_run=True, root=root, run=run, out=lines.append, platform=platform,
                       exe=EXE, user_home=home, uid=euid, euid=euid)
    text = "\n".join(lines)
    assert plan.content and plan.content.strip() in text
    assert str(plan.path).endswith(expect_path)
    assert f"would write: {plan.path}" in text
    for c in expect_cmds:
        assert f"would run: {c}" in text
    assert run.calls == []
    assert _tree(root) == [] and _tree(home) == []


def test_dry_run_system_shows_useradd_when_user_missing(tmp_path):
    lines: list[str] = []
    svc.install("system", dry_run=True, root=tmp_path, out=lines.append, platform="linux", exe=EXE, euid=0)
    useradd = [line for line in lines if "useradd" in line]
    assert useradd and "--system" in useradd[0] and useradd[0].rstrip().endswith(" homie")


def test_dry_run_uninstall(tmp_path):
    lines: list[str] = []
    svc.uninstall("system", dry_run=True, root=tmp_path, out=lines.append, platform="linux", euid=0)
    text = "\n".join(lines)
    assert "would run: systemctl disable --now homie.service" in text
    assert "would remove:" in text


# --- install / uninstall against a temporary root -------------------------------


def test_install_uninstall_system(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMIE_SERVICE_ROOT", str(tmp_path))
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    run = Recorder()
    lines: list[str] = []
    plan = svc.install("system", run=run, out=lines.append, platform="linux", exe=EXE, euid=1000)
    unit = tmp_path / "etc/systemd/system/homie.service"
    assert plan.path == unit and unit.read_text() == svc.render("system", [EXE])
    assert run.calls[0][0] == "useradd" and run.calls[0][-1] == "homie"
    assert run.calls[1:] == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "homie.service"]]
    assert f"wrote {unit}" in lines
    assert "ran: systemctl enable --now homie.service" in lines

    run = Recorder()
    svc.uninstall("system", run=run, out=lines.append, platform="linux", euid=1000)
    assert not unit.exists()
    assert run.calls == [["systemctl", "disable", "--now", "homie.service"], ["systemctl", "daemon-reload"]]


def test_install_skips_useradd_when_user_exists(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("homie:x:999:999::/var/lib/homie:/usr/sbin/nologin\n")
    run = Recorder()
    svc.install("system", root=tmp_path, run=run, out=lambda s: None, platform="linux", exe=EXE, euid=0)
    assert all(c[0] == "systemctl" for c in run.calls)


def test_install_uninstall_user(tmp_path, monkeypatch):
    monkeypatch.delenv("HOMIE_HOME", raising=False)
    home = tmp_path / "home"
    run = Recorder()
    lines: list[str] = []
    plan = svc.install("user", root=tmp_path / "root", run=run, out=lines.append, platform="linux",
                       exe=EXE, user_home=home, euid=1000)
    assert plan.path.is_file() and str(plan.path).endswith("/.config/systemd/user/homie.service")
    assert run.calls == [["systemctl", "--user", "daemon-reload"],
                         ["systemctl", "--user", "enable", "--now", "homie.service"]]
    run = Recorder()
    svc.uninstall("user", root=tmp_path / "root", run=run, out=lines.append, platform="linux",
                  user_home=home, euid=1000)
    assert not plan.path.exists()
    assert ["systemctl", "--user", "disable", "--now", "homie.service"] in run.calls


def test_install_uninstall_launchd(tmp_path, monkeypatch):
    monkeypatch.delenv("HOMIE_HOME", raising=False)
    home = tmp_path / "Users" / "me"
    root = tmp_path / "root"
    run = Recorder()
    plan = svc.install(None, root=root, run=run, out=lambda s: None, platform="darwin", exe=EXE,
                       user_home=home, uid=501, euid=501)
    assert plistlib.loads(plan.path.read_bytes())["ProgramArguments"][0] == EXE
    assert (root / str(home).lstrip("/") / ".homie" / "logs").is_dir()
    assert ["launchctl", "bootstrap", "gui/501", str(plan.path)] in run.calls
    run = Recorder()
    svc.uninstall(None, root=root, run=run, out=lambda s: None, platform="darwin", user_home=home,
                  uid=501, euid=501)
    assert not plan.path.exists()
    assert run.calls == [["launchctl", "bootout", "gui/501/io.homie.agent"]]


def test_root_prefix_without_runner_skips_commands(tmp_path):
    lines: list[str] = []
    svc.install("system", root=tmp_path, out=lines.append, platform="linux", exe=EXE, euid=0)
    assert any(line.startswith("skipped (HOMIE_SERVICE_ROOT is set): systemctl") for line in lines)


def test_failed_command_is_an_error(tmp_path):
    with pytest.raises(HomieError, match="command failed"):
        svc.install("user", root=tmp_path, run=Recorder(returncode=1), out=lambda s: None,
                    platform="linux", exe=EXE, user_home=tmp_path / "h", euid=1000)


# --- errors and status ------------------------------------------------------------


def test_system_install_needs_root(monkeypatch):
    monkeypatch.delenv("HOMIE_SERVICE_ROOT", raising=False)
    with pytest.raises(HomieError, match=r"needs root: sudo homie service install --system"):
        svc.install("system", run=Recorder(), out=lambda s: None, platform="linux", exe=EXE, euid=1000)


def test_user_install_as_root_refused(monkeypatch):
    monkeypatch.delenv("HOMIE_SERVICE_ROOT", raising=False)
    with pytest.raises(HomieError, match="never run as root"):
        svc.install("user", dry_run=True, out=lambda s: None, platform="linux", exe=EXE, euid=0)


def test_system_unit_refuses_exe_under_home():
    with pytest.raises(HomieError, match="ProtectHome"):
        svc.install("system", dry_run=True, out=lambda s: None, platform="linux",
                    exe="/home/me/.local/bin/homie", euid=0)


def test_unsupported_platform():
    with pytest.raises(HomieError, match="Linux with systemd and macOS"):
        svc.install(None, dry_run=True, out=lambda s: None, platform="win32", exe=EXE)


def test_status(tmp_path):
    lines: list[str] = []
    res = svc.status(root=tmp_path, run=Recorder(stdout="active\n"), out=lines.append, platform="linux",
                     user_home=tmp_path / "h")
    assert res["system"] == {"path": str(tmp_path / "etc/systemd/system/homie.service"),
                             "installed": False, "state": "active"}
    assert "user" in res and len(lines) == 2


def test_status_tolerates_missing_systemctl(tmp_path):
    def missing(argv):
        raise FileNotFoundError(argv[0])

    lines: list[str] = []
    res = svc.status("system", root=tmp_path, run=missing, out=lines.append, platform="linux")
    assert res["system"]["state"] == "unknown (systemctl not found)"


# --- click group -------------------------------------------------------------------


def test_cli_dry_run_and_error(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from homie.cli import main

    runner = CliRunner()
    env = {"HOMIE_SERVICE_PLATFORM": "darwin", "HOMIE_SERVICE_ROOT": str(tmp_path), "HOMIE_HOME": str(tmp_path / "h")}
    if os.geteuid() == 0:
        monkeypatch.setattr(os, "geteuid", lambda: 501)
    res = runner.invoke(main, ["service", "install", "--dry-run"], env=env)
    assert res.exit_code == 0, res.output
    assert "io.homie.agent" in res.output and "would run: launchctl bootstrap" in res.output
    assert _tree(tmp_path) == []

    res = runner.invoke(main, ["service", "install", "--system", "--dry-run"], env=env)
    assert res.exit_code == 2
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
