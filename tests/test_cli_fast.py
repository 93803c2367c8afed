"""homie.cli.fast: `homie run` parsed without click must mean exactly what click makes of
the same command line, and hand everything else to click."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from homie.cli.fast import parse_run
from homie.cli.run import run as click_run

SERVED = [
    ["hello.py"],
    ["hello.py", "--epochs", "10", "-n", "x"],
    ["-n", "b", "hello.py"],
    ["--peer=b", "--gpu", "-q", "hello.py", "a", "--", "b"],
    ["-f", "data.csv", "--file", "*.txt", "-e", "A=1", "--env=B=2", "-o", "out", "--name", "exp 1",
     "--no-stdin", "-d", ".", "train.py", "-x"],
    ["-n", "a", "-n", "b", "--quiet", "--output=", "t.py"],
    ["--name", "", "t.py", "--help"],
]

REFUSED = [
    [], ["-h"], ["--help"], ["-n"], ["-n", "b"], ["--", "t.py"], ["-nb", "t.py"], ["--peeer", "b", "t.py"],
    ["--gpu=1", "t.py"], ["-n", "-q", "t.py"], ["--detach", "t.py"], ["--explain", "t.py"], ["--timeout", "1m", "t.py"],
    ["--checkpoint", "c", "t.py"], ["--retries", "2", "t.py"], ["--env-file", "e", "t.py"], ["-qn", "b", "t.py"],
    ["-", "t.py"], ["-"],
]


@pytest.mark.parametrize("argv", SERVED)
def test_fast_path_parses_as_click_does(argv):
    parsed = parse_run(argv)
    assert parsed is not None
    script, args, opts = parsed
    ctx = click_run.make_context("run", list(argv))
    p = ctx.params
    assert script == p["script"] and args == list(p["args"])
    defaults = {"peer": None, "files": (), "directory": None, "out_dir": "results", "gpu": False, "env_pairs": (),
                "label": None, "quiet": False, "no_stdin": False}
    for key, default in defaults.items():
        assert opts.get(key, default) == p[key], key
    # what the fast path cannot take stays at click's defaults
    for key in ("env_file", "timeout", "executor", "scheduler", "retries"):
        assert p[key] is None
    assert p["checkpoints"] == () and not p["detach"] and not p["explain"] and not p["as_json"]


@pytest.mark.parametrize("argv", REFUSED)
def test_fast_path_leaves_the_rest_to_click(argv):
    assert parse_run(argv) is None


def test_homie_run_never_loads_click(tmp_path):
    """The fast path up to where it needs the daemon: no click, no rich."""
    code = ("import sys; sys.argv = ['homie', 'run', 'nope.py']; from homie.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            "    print(e.code, 'click' in sys.modules, 'rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"HOMIE_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["2", "False", "False"], out
    assert out.stderr == "error: script not found: nope.py\n"


# Modules the fast paths must not import before they reach the daemon: each costs a
# `homie run` 3-10 ms of start-up on the bench machine (docs/benchmarks.md).
HEAVY = ("click", "rich", "dataclasses", "typing", "inspect", "pathlib", "socket", "threading", "tempfile", "yaml",
         "cryptography", "psutil")


def _fast(tmp_path, *argv: str, site: bool = False) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.argv = ['homie', *{list(argv)!r}]; from homie.cli import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n"
            f"    print(e.code, *[m for m in {HEAVY!r} if m in sys.modules])")
    (tmp_path / "hello.py").write_text("print('hello')\n")
    # -S: no site-packages, so no .pth file (an editable install's import hook loads pathlib)
    # imports anything first; the fast paths need nothing but the standard library and homie.
    return subprocess.run([sys.executable, *([] if site else ["-S"]), "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={"HOMIE_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})


@pytest.mark.parametrize("argv", [["run", "hello.py"], ["run", "-n", "b", "-f", "hello.py", "hello.py", "x"],
                                  ["peers"], ["peers", "--json"]])
def test_fast_paths_reach_the_daemon_without_heavy_imports(tmp_path, argv):
    out = _fast(tmp_path, *argv)
    # No daemon runs for this home: the fast path got as far as connecting (exit 69), with none of HEAVY loaded.
    assert out.stdout.split() == ["69"], out
    assert out.stderr == "error: homie is not running; start it with: homie up\n"


def test_peers_options_the_fast_path_does_not_know_go_to_click(tmp_path):
    out = _fast(tmp_path, "peers", "--help", site=True)
    code, *loaded = out.stdout.splitlines()[-1].split()
    assert code == "0" and "click" in loaded and "homie peers --json" in out.stdout, out
    out = _fast(tmp_path, "peers", "--jsn", site=True)
    code, *loaded = out.stdout.splitlines()[-1].split()
    assert code == "2" and "click" in loaded and "Did you mean '--json'?" in out.stderr, out


# -- homie map's default in-flight bound ----------------------------------------------------------


def test_map_keeps_twice_the_slots_in_flight():
    from homie.cli.map import default_in_flight

    peers = [{"name": "me", "max_jobs": 2, "status": "idle"}, {"name": "b", "max_jobs": 2, "status": "busy"},
             {"name": "d", "max_jobs": 4, "status": "idle"}]
    assert default_in_flight(peers, 1000) == 16
    assert default_in_flight(peers, 10) == 10  # never more than the inputs
    assert default_in_flight(peers, 1) == 1
    # paused peers take nothing; a peer that does not say counts as one slot
    assert default_in_flight([*peers, {"name": "p", "max_jobs": 8, "status": "paused"}, {"name": "x"}], 1000) == 18
    # --gpu: only peers with a GPU
    assert default_in_flight([*peers, {"name": "g", "max_jobs": 1, "gpu": "A100"}], 1000, gpu=True) == 2
    # nobody (or nobody free to count): the jobs still go to the queue and wait there
    assert default_in_flight([], 1000) == 2
    assert default_in_flight([{"name": "p", "max_jobs": 8, "status": "paused"}], 1000) == 2
    assert default_in_flight([{"max_jobs": None}, {"max_jobs": True}, {"max_jobs": 0}], 1000) == 6


def test_map_gate_follows_its_limit():
    import threading
    import time

    from homie.cli.map import _Gate

    gate = _Gate(1)
    inside = []
    release = threading.Event()

    def one(i):
        with gate:
            inside.append(i)
            release.wait(10)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(inside) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(inside) == 1
    gate.set_limit(3)
    while len(inside) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(inside) == 3
    release.set()
    for t in threads:
        t.join(10)
    assert gate.held == 0


def test_the_verb_table_names_every_command_of_every_module():
    """homie.cli.app loads a verb's module only when asked: its table must be complete."""
    import importlib

    from homie.cli.app import VERBS

    found = {}
    for module in set(VERBS.values()):
        for command in importlib.import_module(f"homie.cli.{module}").COMMANDS:
            found[command.name] = module
    assert found == VERBS


def test_homie_peers_loads_neither_the_jobs_verbs_nor_map():
    import subprocess
    import sys

    code = ("import sys; from homie.cli.app import main; main.get_command(None, 'peers');"
            " print(sorted(m for m in ('homie.cli.jobs', 'homie.cli.map', 'homie.cli.net') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['homie.cli.net']", out
