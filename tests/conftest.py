"""Shared fixtures. The multi-host harness lives in tests/netns.py (`from netns import ...`)."""

from __future__ import annotations

import os

import pytest

from netns import Cluster, can_use_netns


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _needs_netns(item: pytest.Item) -> bool:
    return "cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("netns") is not None


# ---------------------------------------------------------------- netns tests: skip locally, fail in CI

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = [item for item in items if _needs_netns(item)]
    if not wanted:
        return
    ok, reason = can_use_netns()
    if ok:
        return
    for item in wanted:
        if _in_ci():  # CI runs as root: an unusable netns setup is a failure, never a skip
            item.add_marker(pytest.mark.netns_unavailable(reason))
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    m = item.get_closest_marker("netns_unavailable")
    if m is not None:
        pytest.fail(f"CI is set but network namespaces are unusable: {m.args[0]}", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "netns_unavailable(reason): internal, set by conftest")


@pytest.fixture
def cluster():
    """A fresh namespaced LAN (tests/netns.py Cluster); everything is torn down afterwards."""
    with Cluster() as c:
        yield c


# ---------------------------------------------------------------- unit-test helpers

@pytest.fixture
def homie_home(tmp_path, monkeypatch):
    """A private HOMIE_HOME for unit tests."""
    home = tmp_path / "homie"
    home.mkdir()
    monkeypatch.setenv("HOMIE_HOME", str(home))
    return home


# ---------------------------------------------------------------- docs/reliability.md from the run itself

import reliability  # noqa: E402


@pytest.fixture
def recorder():
    """Hardening tests record each case here; see tests/reliability.py."""
    return reliability.Recorder()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_call(item):
    # Innermost wrapper: Hypothesis reports its statistics (cases run) to us.
    try:
        from hypothesis.statistics import collector
    except ImportError:
        yield
        return
    with collector.with_value(lambda stats: reliability.count_hypothesis(item.nodeid, stats)):
        yield


def pytest_sessionfinish(session, exitstatus):
    # scripts/test.sh says how it was called; a bare pytest run names itself.
    command = os.environ.get("HOMIE_TEST_COMMAND") or "pytest " + " ".join(session.config.invocation_params.args)
    reliability.write(command.strip())
