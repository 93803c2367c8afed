"""homie.cli.fast: `homie run` parsed without click must mean exactly what click makes of
the same command line, and hand everything else to click."""

from __future__ import annotations

import subprocess
import sys

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
