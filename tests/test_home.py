"""The home's own safety (homie/home.py): who owns it, who can write to it, and
opening its files without following symlinks."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from homie.errors import EXIT_USAGE, UnsafeHomeError
from homie.home import Home, open_private, tighten

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="chown to another user needs root")
NOBODY = 65534


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def base(tmp_path):
    os.chmod(tmp_path, 0o700)
    return tmp_path


def test_ensure_creates_a_private_home(base):
    home = Home(base / "h")
    home.ensure()
    assert mode(home.root) == 0o700
    for d in (home.root / "logs", home.jobs, home.outbox, home.blobs, home.venvs):
        assert d.is_dir() and mode(d) == 0o700, d


def test_a_missing_home_passes_the_check(base):
    Home(base / "nothing-yet").check()
    Home(base / "nothing-yet").check(owned=False)


def test_a_home_opened_for_the_job_user_is_fine(base):
    # the worker makes the home 0711 so the job user can reach its job directory
    home = Home(base / "h")
    home.ensure()
    os.chmod(home.root, 0o711)
    home.check()
    home.check(owned=False)


def refused(home: Home, match: str, owned: bool = True) -> UnsafeHomeError:
    with pytest.raises(UnsafeHomeError, match=match) as e:
        home.check(owned=owned)
    assert e.value.exit_code == EXIT_USAGE == 2
    assert "\n" not in str(e.value)
    return e.value


def test_a_symlinked_home_is_refused(base):
    real = base / "real"
    Home(real).ensure()
    os.chmod(real, 0o755)
    link = base / "h"
    link.symlink_to(real)
    home = Home(link)
    refused(home, "is a symlink")
    refused(home, "is a symlink", owned=False)
    with pytest.raises(UnsafeHomeError, match="is a symlink"):
        home.ensure()
    assert mode(real) == 0o755, "ensure() chmodded the symlink's target"


@pytest.mark.parametrize("bits", [0o777, 0o770, 0o702, 0o720])
def test_a_home_others_can_write_to_is_refused_and_left_alone(base, bits):
    home = Home(base / "h")
    home.root.mkdir()
    os.chmod(home.root, bits)
    refused(home, f"other users can write to it .mode {bits:04o}; fix: chmod go-w")
    refused(home, "other users can write to it", owned=False)
    with pytest.raises(UnsafeHomeError):
        home.ensure()
    assert mode(home.root) == bits, "a refused home must not be chmodded either way"
    assert not (home.root / "logs").exists()


def test_a_file_where_the_home_should_be_is_refused(base):
    (base / "h").write_text("")
    refused(Home(base / "h"), "not a directory")


@needs_root
def test_a_home_owned_by_another_user_is_refused(base):
    home = Home(base / "h")
    home.root.mkdir(mode=0o700)
    os.chown(home.root, NOBODY, NOBODY)
    err = refused(home, f"belongs to .*uid {NOBODY}.*not to")
    assert "HOMIE_HOME" in str(err)
    with pytest.raises(UnsafeHomeError):
        home.ensure()
    assert os.stat(home.root).st_uid == NOBODY and mode(home.root) == 0o700
    # talking to a daemon through another user's home is how the system service
    # is driven (group homie, HOMIE_HOME=/var/lib/homie): allowed
    home.check(owned=False)


@needs_root
def test_a_home_in_a_directory_another_user_owns_is_refused(base):
    theirs = base / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    home = Home(theirs / "h")
    home.root.mkdir(mode=0o700)
    refused(home, f"the directory holding it, {theirs}, belongs to")
    home.check(owned=False)


def test_a_home_in_a_directory_others_can_write_to_is_refused_unless_sticky(base):
    shared = base / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    home = Home(shared / "h")
    home.root.mkdir(mode=0o700)
    refused(home, "other users can write to the directory holding it")
    refused(home, "other users can write to the directory holding it", owned=False)
    os.chmod(shared, 0o1777)  # like /tmp: nobody else can rename our home away
    home.check()
    home.ensure()


def test_ensure_tightens_files_an_older_version_left_open(base):
    home = Home(base / "h")
    home.ensure()
    for p in (home.db, home.log, home.pidfile):
        p.write_text("x")
        os.chmod(p, 0o644)
    os.chmod(home.root / "logs", 0o755)
    os.chmod(home.outbox, 0o755)
    home.ensure()
    for p in (home.db, home.log, home.pidfile):
        assert mode(p) == 0o600, p
    assert mode(home.root / "logs") == 0o700 and mode(home.outbox) == 0o700


def test_tighten_never_follows_a_symlink_or_a_hard_link(base):
    outside = base / "outside"
    outside.write_text("x")
    os.chmod(outside, 0o644)
    home = Home(base / "h")
    home.ensure()
    home.db.symlink_to(outside)
    os.link(outside, home.pidfile)
    home.ensure()
    assert mode(outside) == 0o644
    tighten(base / "missing")  # nothing to do, no error


@needs_root
def test_tighten_leaves_another_users_file_alone(base):
    f = base / "f"
    f.write_text("x")
    os.chmod(f, 0o644)
    os.chown(f, NOBODY, NOBODY)
    tighten(f)
    assert mode(f) == 0o644


def test_open_private_creates_0600_whatever_the_umask(base):
    old = os.umask(0)
    try:
        fd = open_private(base / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    finally:
        os.umask(old)
    os.close(fd)
    assert mode(base / "f") == 0o600
    # an existing file left 0644 is tightened when opened to write
    os.chmod(base / "f", 0o644)
    os.close(open_private(base / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    assert mode(base / "f") == 0o600


def test_open_private_does_not_follow_a_symlink(base):
    target = base / "target"
    target.write_text("keep\n")
    (base / "log").symlink_to(target)
    (base / "dangling").symlink_to(base / "nowhere")
    for name in ("log", "dangling"):
        with pytest.raises(OSError) as e:
            open_private(base / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        assert e.value.errno == errno.ELOOP
    assert target.read_text() == "keep\n" and not (base / "nowhere").exists()
