"""The plugin system without a network: hookspecs vs docs, the public plugin API
(homie.api) and who imports what, loading, isolation of a raising plugin, firstresult
semantics, the built-in schedulers and an executor bound to a job."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from homie import api, hookspecs, plugins, scheduling
from homie.api import hookimpl
from homie.builtin import best_idle, executors, gpu_first, karma
from homie.discovery.peers import Peer as TablePeer
from homie.errors import HomieError
from homie.worker import execution

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "plugins.md"
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


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


def job(**kw) -> api.JobRequest:
    return api.JobRequest(job_id="j1", script="x.py", submitter="me", **kw)


def peer(name, **kw) -> api.Peer:
    """A peer as the plugins see it (scheduling.choose takes these as well as the table's)."""
    kw.setdefault("ip", f"10.0.0.{abs(hash(name)) % 200 + 1}")
    kw.setdefault("port", 5556)
    return api.Peer(name=name, **kw)


# -- docs -------------------------------------------------------------------------------


def test_every_hookspec_is_documented():
    specs = _specs()
    assert len(specs) >= 6, specs
    headings = set(re.findall(r"^### (homie_\w+)\s*$", DOCS.read_text(), re.M))
    missing = [s for s in specs if s not in headings]
    assert not missing, f"hookspecs without a '### <name>' section in docs/plugins.md: {', '.join(missing)}"
    stale = sorted(headings - set(specs))
    assert not stale, f"docs/plugins.md documents hooks that are not specs: {', '.join(stale)}"


def test_every_public_name_is_documented():
    text = DOCS.read_text()
    missing = [name for name in api.__all__ if f"`{name}" not in text]
    assert not missing, f"homie.api names docs/plugins.md does not mention: {', '.join(missing)}"
    for name in api.__all__:
        assert hasattr(api, name), name


def test_hookspecs_holds_only_homie_specs():
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        assert name.startswith("homie_"), name
        assert (fn.__doc__ or "").strip(), f"{name} has no docstring"


def test_each_hook_call_passes_exactly_the_spec_arguments():
    """Every plugins.call() in homie passes the arguments its spec names, no more, no fewer."""
    specs = {name: list(inspect.signature(fn).parameters)
             for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)}
    calls = 0
    for path in (REPO / "homie").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "call"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "plugins"):
                hook = node.args[0].value
                assert sorted(k.arg for k in node.keywords) == sorted(specs[hook]), f"{path}:{node.lineno}"
                calls += 1
    assert calls >= 6


def _homie_imports(path: Path) -> list[str]:
    """The homie modules a file imports (relative imports count as homie's)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name == "homie" or a.name.startswith("homie.")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                out.append("." * node.level + mod)
            elif mod == "homie":
                out += [f"homie:{a.name}" for a in node.names]
            elif mod.startswith("homie."):
                out.append(mod)
    return out


def test_plugins_import_only_the_public_api():
    files = sorted((REPO / "homie" / "builtin").glob("*.py")) + sorted((REPO / "plugins").rglob("*.py")) \
        + sorted(TEST_PLUGINS.glob("*.py"))
    assert len(files) >= 11, files
    bad = {str(f.relative_to(REPO)): [m for m in _homie_imports(f) if m not in ("homie.api", "homie:hookimpl")]
           for f in files}
    bad = {f: mods for f, mods in bad.items() if mods}
    assert not bad, f"plugins must import only homie.api from homie: {bad}"
    # and the check itself sees an internal import
    assert _homie_imports(Path(hookspecs.__file__).with_name("scheduling.py"))


def test_from_homie_import_hookimpl_keeps_import_homie_light():
    code = ("import sys, homie; assert 'pluggy' not in sys.modules, 'import homie loaded pluggy'; "
            "from homie import hookimpl; import homie.api; assert hookimpl is homie.api.hookimpl; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


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


def test_a_misspelled_hook_is_an_error(pm, tmp_path, monkeypatch):
    (tmp_path / "homie_test_typo.py").write_text(
        "from homie.api import hookimpl\n\n@hookimpl\ndef homie_chose_peer(job, peers, config):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HomieError) as e:
        plugins.load_plugins(extra=["homie_test_typo"])
    assert "homie_test_typo" in str(e.value) and "'homie_chose_peer'" in str(e.value) and "typo" in str(e.value)
    assert e.value.exit_code == 2
    plugins.pm.unregister(name="homie_test_typo")
    plugins.check_pending()  # gone with it


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
    # the table's peers are shown to plugins as read-only homie.api.Peer views
    table = [TablePeer(name=p.name, ip=p.ip, port=p.port, karma=dict(p.karma), cpu_percent_idle=p.cpu_percent_idle)
             for p in (generous, taker, even)]
    chosen, verdicts = scheduling.choose(job(scheduler="karma"), table, None)
    assert chosen is table[1] and [p for p, _ in verdicts] == table
    # worker side: the submitter who gave most is served first, ties in arrival order
    jobs = [SimpleNamespace(submitter=s, queued_at=t) for s, t in (("a", 1), ("b", 2), ("c", 3), ("d", 4))]
    order = karma.homie_order_queue(jobs, {"a": -10.0, "b": 100.0, "c": 0.0})
    assert [j.submitter for j in order] == ["b", "c", "d", "a"]


# -- the public types -----------------------------------------------------------------------------


def test_peers_reach_plugins_read_only():
    seen = []

    class Looker:
        @hookimpl
        def homie_peer_ineligible(self, job, peer, config):
            seen.append(peer)
            with pytest.raises(dataclasses.FrozenInstanceError):
                peer.status = "paused"
            with pytest.raises(TypeError):
                peer.karma["given"] = 1e9
            return None

    table = [TablePeer(name="raj", ip="10.0.0.2", port=5556, karma={"given": 5.0, "taken": 2.0},
                        gpus=[{"index": 0, "name": "T4", "mem_free_gb": 8.0, "mem_total_gb": 16.0}])]
    plugins.load_plugins()
    plugins.pm.register(Looker(), name="test-looker")
    try:
        chosen, _ = scheduling.choose(job(), table, None)
    finally:
        plugins.pm.unregister(name="test-looker")
    assert chosen is table[0]
    assert isinstance(seen[0], api.Peer) and seen[0].balance == 3.0 and seen[0].has_gpu
    assert table[0].status == "idle" and table[0].karma == {"given": 5.0, "taken": 2.0}


# -- executors: bound to a job, seeing only homie.api ---------------------------------------------------


def _worker_job(tmp_path, script="hello.py", body="print('hello from', __import__('os').environ['SHOUT'])\n",
                args=("x",), executor="auto"):
    d = tmp_path / "job"
    d.mkdir()
    (d / script).write_text(body)
    manifest = [{"path": script, "size": len(body), "sha256": "0" * 64, "mode": 0o644}]
    return SimpleNamespace(id="j1", submitter="raj", script=script, args=list(args), files=manifest, executor=executor,
                           gpu=False, dir=d, ident=SimpleNamespace(differs=False, uid=os.getuid(), gid=os.getgid()))


def _worker_ctx(tmp_path):
    return SimpleNamespace(config=SimpleNamespace(venv_cache_max_gb=1), python=sys.executable, python_version="3.x",
                           base_env={"PATH": "/usr/bin:/bin"}, sandboxed=False,
                           work=SimpleNamespace(venvs=str(tmp_path / "venvs")))


def test_a_third_party_executor_runs_a_job_through_the_public_api(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TEST_PLUGINS))
    import shout_executor

    wjob = _worker_job(tmp_path, executor="shout")
    available = {c.name: c for group in [executors.homie_executors(), shout_executor.homie_executors()] for c in group}
    ex = execution.bind(available, wjob, _worker_ctx(tmp_path))
    assert isinstance(ex.executor, shout_executor.ShoutExecutor)
    assert isinstance(ex.view, api.Job) and ex.view.args == ("x",) and ex.view.files[0].path == "hello.py"
    out = []
    ex.prepare(wjob, lambda stream, data: out.append((stream, data)))
    assert out == [(api.STDERR, b"shout: hello.py is 55 bytes, 1 file(s), frozen yes\n")]
    argv, env = ex.command(wjob)
    assert argv == [sys.executable, "hello.py", "x"] and env == {"SHOUT": "RAJ", "SHOUT_DIR": str(wjob.dir)}
    assert not hasattr(ex, "venv_dir")
    # what the worker would run, run here
    r = subprocess.run(argv, cwd=env["SHOUT_DIR"], env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "hello from RAJ\n", r.stderr
    assert wjob.script == "hello.py" and wjob.args == ["x"]  # nothing set on the worker's job
    (tmp_path / "f").mkdir()
    failing = _worker_job(tmp_path / "f", args=("fail",), executor="shout")
    with pytest.raises(HomieError, match="shout refuses"):
        execution.bind(available, failing, _worker_ctx(tmp_path)).prepare(failing, lambda *a: None)


def test_auto_picks_the_highest_priority_executor_that_wants_the_job(tmp_path):
    available = {c.name: c for c in executors.homie_executors()}
    wjob = _worker_job(tmp_path)
    ex = execution.bind(available, wjob, _worker_ctx(tmp_path))
    assert ex.executor.name == "subprocess" and not hasattr(ex, "venv_dir")
    wjob.files.append({"path": "requirements.txt", "size": 0, "sha256": "1" * 64})
    ex = execution.bind(available, wjob, _worker_ctx(tmp_path))
    assert ex.executor.name == "venv"
    assert ex.venv_dir(wjob).startswith(str(tmp_path / "venvs") + "/")  # bound into the sandbox by the worker
    argv, env = ex.command(wjob)
    assert argv[0] == ex.venv_dir(wjob) + "/bin/python" and env["VIRTUAL_ENV"] == ex.venv_dir(wjob)


def test_script_argv_runs_by_the_shebang_and_never_through_a_link(tmp_path):
    wjob = _worker_job(tmp_path, script="run.sh", body="#!/bin/sh -e\necho hi\n")
    view = execution.job_view(wjob)
    assert api.script_argv(view, "/py") == ["/bin/sh", "-e", "run.sh", "x"]
    os.symlink("/etc/passwd", wjob.dir / "link.sh")
    linked = dataclasses.replace(view, script="link.sh")
    with pytest.raises(HomieError, match="cannot read link.sh"):
        api.script_argv(linked, "/py")


def test_the_docs_example_plugin_works(tmp_path):
    """The complete plugin in docs/plugins.md, as written there."""
    text = DOCS.read_text().split("## A complete third-party plugin", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "homie_example.py"
    path.write_text(code)
    assert set(_homie_imports(path)) == {"homie.api"}
    mod = {}
    exec(compile(code, str(path), "exec"), mod)
    busy, free = peer("busy", running=3), peer("free", running=0)
    assert mod["homie_choose_peer"](job(scheduler="fewest-jobs"), [busy, free], None) is free
    assert mod["homie_choose_peer"](job(), [busy, free], None) is None
    wjob = _worker_job(tmp_path, executor="timed")
    ex = execution.bind({c.name: c for c in mod["homie_executors"]()}, wjob, _worker_ctx(tmp_path))
    out = []
    ex.prepare(wjob, lambda stream, data: out.append(data))
    assert out == [b"timed: running hello.py with 1 file(s)\n"]
    assert ex.command(wjob) == (["/usr/bin/time", "-v", sys.executable, "hello.py", "x"], {"TIMED": "1"})
