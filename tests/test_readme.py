"""The README, executed (issue 13): its Quick start runs as written on namespace
hosts, and every option in its command table exists in that command's --help.
When the program changes, this fails until the README says the same."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from jobhelp import BASE_CONFIG, peer_names, write_config
from netns import homie_bin, wait_until

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.M | re.S)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def quick_start() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", section("Quick start"), re.S).group(1)
    return [ln.split("  #", 1)[0].strip() for ln in block.splitlines() if ln.strip()]


def table_commands() -> list[str]:
    rows = [ln for ln in section("Commands").splitlines() if ln.startswith("| `homie")]
    assert len(rows) > 10, rows
    return [c for row in rows for c in re.findall(r"`(homie [^`]+)`", row.split(" | ")[0])]


def test_quick_start_installs_with_pipx_not_bare_pip():
    lines = quick_start()
    assert lines[0].startswith("pipx install ."), lines
    assert not any(ln.startswith("pip install") for ln in lines)


@pytest.mark.parametrize("synopsis", table_commands())
def test_every_option_in_the_command_table_exists(synopsis):
    words = synopsis.split()
    # the verb: `homie service install`, `homie run`...; not options, placeholders or `|`
    verb = []
    for w in words[1:]:
        if not re.fullmatch(r"[a-z-]+", w) or w in ("or",):
            break
        verb.append(w)
    if verb[0] == "service":
        verb = verb[:2]
    cp = subprocess.run([homie_bin(), *verb, "--help"], capture_output=True, text=True, timeout=30)
    assert cp.returncode == 0, (verb, cp.stderr)
    for opt in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", synopsis):
        assert re.search(rf"(?<![\w-]){re.escape(opt)}\b", cp.stdout), (
            f"{synopsis}: {opt} not in `homie {' '.join(verb)} --help`")


@pytest.mark.netns
def test_quick_start_runs_as_written(cluster):
    """raj runs `init`, you run `join` with the key it printed, both `up`, you see raj
    in `peers`, and the README's first job runs on raj and brings its results home."""
    raj, you = cluster.add_host("raj"), cluster.add_host("you")
    examples = you.home / "work-examples"
    shutil.copytree(REPO / "examples", examples / "examples")
    examples.chmod(0o755)
    key = None
    for line in quick_start():
        argv = shlex.split(line)
        if argv[0] == "pipx":
            continue  # the harness already has homie installed
        cwd = examples
        if argv[:2] == ["cd", "examples"] and argv[2] == "&&":
            cwd, argv = examples / "examples", argv[3:]
        assert argv[0] == "homie", line
        verb = argv[1]
        if verb == "init":
            r = raj.homie(*argv[1:])
            assert r.returncode == 0, r.stderr
            key = re.search(r"group key: (\S+)", r.stdout).group(1)
            fp = re.search(r"group fingerprint: (\w+)", r.stdout).group(1)
            # fast heartbeats; `you` only submits; the namespaces share one host name, so name `you`
            write_config(raj, name="raj")
            write_config(you, name="you", max_jobs=0)
        elif verb == "join":
            r = you.homie("join", key)
            assert r.returncode == 0 and fp in r.stdout, r.stdout + r.stderr
        elif verb == "up":
            for h in (raj, you):
                r = h.homie("up", timeout=60)
                assert r.returncode == 0, r.stdout + r.stderr
        elif verb == "peers":
            wait_until(lambda: "raj" in peer_names(you), 15, msg="you to see raj")
            r = you.homie("peers")
            assert r.returncode == 0 and re.search(r"^raj\s", r.stdout, re.M), r.stdout
        elif verb == "run":
            r = you.homie(*argv[1:], cwd=cwd, timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "[raj] epoch 10/10" in r.stdout and "→ saved: results/model.pt" in r.stderr, r.stdout + r.stderr
            assert (cwd / "results" / "model.pt").exists()
        else:
            pytest.fail(f"the README's quick start has a command this test does not know: {line}")
    assert key, "the quick start never ran init"
    assert BASE_CONFIG  # the only thing added to the README's steps: faster heartbeats
