"""The plugin system without a network: hookspecs vs docs, loading, isolation of
a raising plugin, firstresult semantics and the built-in schedulers."""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from homie import hookspecs, plugins, scheduling
from homie.builtin import best_idle, gpu_first, karma
from homie.hookspecs import hookimpl
from homie.peers import Peer

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def _specs() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                  if name.startswith("homie_"))


@pytest.fixture
def pm():
    """The global plugin manager, loaded; anything a test registers is removed again."""
    plugins.load_plugins()
    before = set(plugins.pm.get_plugins())
    disabled_before = dict(plugins.disabled)
    yield plugins.pm
    for p in set(plugins.pm.get_plugins()) - before:
        plugins.pm.unregister(p)
    plugins.disabled.clear()
    plugins.disabled.update(disabled_before)


def job(**kw) -> scheduling.JobRequest:
    return scheduling.JobRequest(job_id="j1", script="x.py", submitter="me", **kw)


def peer(name, **kw) -> Peer:
    kw.setdefault("ip", f"10.0.0.{abs(hash(name)) % 200 + 1}")
    kw.setdefault("port", 5556)
    return Peer(name=name, **kw)


# -- docs -------------------------------------------------------------------------------


def test_every_hookspec_is_documented():
    specs = _specs()
    assert len(specs) >= 6, specs
    headings = set(re.findall(r"^### (homie_\w+)\s*$", DOCS.read_text(), re.M))
    missing = [s for s in specs if s not in headings]
    assert not missing, f"hookspecs without a '### <name>' section in docs/plugins.md: {', '.join(missing)}"
    stale = sorted(headings - set(specs))
    assert not stale, f"docs/plugins.md documents hooks that are not specs: {', '.join(stale)}"


# -- loading ------------------------------------------------------------------------------


def test_load_plugins_is_idempotent(pm):
    plugins.load_plugins()
    names = sorted(pm.get_name(p) for p in pm.get_plugins())
    for name in plugins.DEFAULT_PLUGINS:
        assert name in names
    plugins.load_plugins()
    plugins.load_plugins(extra=["homie.builtin.karma"])  # already registered: no second copy
    again = sorted(pm.get_name(p) for p in pm.get_plugins())
    assert again == names
    # each built-in hook is implemented once, not once per load
    impls = [i.plugin_name for i in pm.hook.homie_choose_peer.get_hookimpls()]
    assert len(impls) == len(set(impls))
    described = [p["name"] for p in plugins.describe()]
    assert len(described) == len(set(described))


def test_unimportable_extra_plugin_is_disabled_not_fatal(pm):
    plugins.load_plugins(extra=["homie_no_such_plugin_xyz"])
    assert "homie_no_such_plugin_xyz" in plugins.disabled
    assert "import failed" in plugins.disabled["homie_no_such_plugin_xyz"]
    entry = [p for p in plugins.describe() if p["name"] == "homie_no_such_plugin_xyz"]
    assert entry and entry[0]["disabled"]


# -- call(): isolation and firstresult ---------------------------------------------------------


class Raiser:
    @hookimpl
    def homie_probe_resources(self, config):
        raise RuntimeError("broken on purpose")


class Adds:
    def __init__(self, key, value):
        self.key, self.value = key, value

    @hookimpl
    def homie_probe_resources(self, config):
        return {self.key: self.value}


def test_call_isolates_a_raising_plugin(pm):
    reported = []
    plugins.on_error(lambda name, hook, exc: reported.append((name, hook, str(exc))))
    try:
        good = Adds("test_key", 42)
        raiser = Raiser()
        pm.register(good, name="test-good")
        pm.register(raiser, name="test-raiser")
        results = plugins.call("homie_probe_resources", config=SimpleNamespace())
        # the others still answered, the built-in probe among them
        assert {"test_key": 42} in results
        assert any("cpu_percent_idle" in r for r in results)
        assert pm.get_plugin("test-raiser") is None and not pm.is_registered(raiser)
        assert pm.is_registered(good)
        assert "test-raiser" in plugins.disabled
        why = plugins.disabled["test-raiser"]
        assert "RuntimeError" in why and "broken on purpose" in why
        assert ("test-raiser", "homie_probe_resources", "broken on purpose") in reported
        listed = {p["name"]: p for p in plugins.describe()}
        assert listed["test-raiser"].get("disabled")
        # a second call does not ask it again
        assert {"test_key": 42} in plugins.call("homie_probe_resources", config=SimpleNamespace())
    finally:
        plugins._on_error.clear()


class Chooser:
    def __init__(self, pick):
        self.pick = pick
        self.calls = 0

    @hookimpl
    def homie_choose_peer(self, job, peers, config):
        self.calls += 1
        return self.pick(peers)


def test_firstresult_first_non_none_wins(pm):
    a, b = peer("a", cpu_percent_idle=10), peer("b", cpu_percent_idle=90)
    # with only the built-ins, best-idle (trylast) decides: the idlest
    assert plugins.call("homie_choose_peer", job=job(), peers=[a, b], config=None) is b
    older = Chooser(lambda peers: peers[0])
    newer = Chooser(lambda peers: None)
    pm.register(older, name="test-older")
    pm.register(newer, name="test-newer")
    # the newer plugin is asked first; its None passes to the older one, whose answer wins
    assert plugins.call("homie_choose_peer", job=job(), peers=[a, b], config=None) is a
    assert newer.calls == 1 and older.calls == 1
    pm.unregister(newer)
    first = Chooser(lambda peers: peers[1])
    pm.register(first, name="test-first")
    assert plugins.call("homie_choose_peer", job=job(), peers=[a, b], config=None) is b
    assert first.calls == 1 and older.calls == 1  # not asked once a result came
    # a non-firstresult hook collects every plugin's answer
    assert isinstance(plugins.call("homie_executors"), list)
    assert len(plugins.call("homie_executors")) >= 1


# -- the built-in schedulers ------------------------------------------------------------------


def test_best_idle_prefers_friends_over_local_node(pm):
    me = peer("me", cpu_percent_idle=100, ram_free_gb=64, local=True)
    busy_friend = peer("raj", cpu_percent_idle=5, ram_free_gb=1)
    idle_friend = peer("mike", cpu_percent_idle=80, ram_free_gb=8)
    assert best_idle.homie_choose_peer(job(), [me, busy_friend], None) is busy_friend
    assert best_idle.homie_choose_peer(job(), [me, busy_friend, idle_friend], None) is idle_friend
    assert best_idle.homie_choose_peer(job(), [me], None) is me  # the last resort
    # and through the whole chain (scheduling.choose with the eligibility rules)
    chosen, _ = scheduling.choose(job(), [me, busy_friend, idle_friend], None)
    assert chosen is idle_friend


def test_gpu_first_picks_most_free_gpu_memory(pm):
    small = peer("small", gpu="T4", gpu_mem_free_gb=8.0, cpu_percent_idle=100)
    big = peer("big", gpu="A100", gpu_mem_free_gb=70.0, cpu_percent_idle=1)
    none = peer("cpu-only", cpu_percent_idle=100, ram_free_gb=256)
    assert gpu_first.homie_choose_peer(job(gpu=True), [small, big, none], None) is big
    assert gpu_first.homie_choose_peer(job(gpu=False), [small, big], None) is None  # not its job
    assert gpu_first.homie_choose_peer(job(gpu=False, scheduler="gpu-first"), [small, big], None) is big
    chosen, verdicts = scheduling.choose(job(gpu=True), [small, big, none], None)
    assert chosen is big
    assert dict((p.name, r) for p, r in verdicts)["cpu-only"] == ["no GPU"]


def test_karma_scheduler_picks_lowest_balance(pm):
    generous = peer("generous", karma={"given": 500.0, "taken": 10.0}, cpu_percent_idle=100)
    taker = peer("taker", karma={"given": 5.0, "taken": 300.0}, cpu_percent_idle=1)
    even = peer("even", karma={}, cpu_percent_idle=50)
    peers = [generous, taker, even]
    assert karma.homie_choose_peer(job(scheduler="karma"), peers, None) is taker
    assert karma.homie_choose_peer(job(), peers, None) is None  # only when selected
    chosen, _ = scheduling.choose(job(scheduler="karma"), peers, None)
    assert chosen is taker
    # worker side: the submitter who gave most is served first, ties in arrival order
    jobs = [SimpleNamespace(submitter=s, queued_at=t) for s, t in (("a", 1), ("b", 2), ("c", 3), ("d", 4))]
    order = karma.homie_order_queue(jobs, {"a": -10.0, "b": 100.0, "c": 0.0})
    assert [j.submitter for j in order] == ["b", "c", "d", "a"]
