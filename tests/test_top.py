"""`homie top`: the rendering of a sample state, and one frame of a real 2-host cluster."""

from __future__ import annotations

import time

import pytest
from rich.console import Console

from homie.top import render

NOW = 1_700_000_000.0


def _peer(name, ip, **kw):
    d = {"name": name, "ip": ip, "cpu_percent_idle": 97.0, "ram_free_gb": 12.5, "ram_total_gb": 50.0, "gpu": None,
         "gpu_mem_free_gb": None, "running": 0, "max_jobs": 4, "status": "idle", "karma": None}
    d.update(kw)
    return d


def sample_state() -> dict:
    return {
        "me": _peer("you", "10.0.0.3", max_jobs=0, karma={"given": 0.0, "taken": 42.0}),
        "peers": [
            _peer("raj", "10.0.0.1", running=2, max_jobs=2, status="busy", gpu="RTX 4090", gpu_mem_free_gb=20.5,
                  karma={"given": 42.0, "taken": 0.0}),
            _peer("mike", "10.0.0.2", status="paused", cpu_percent_idle=None, ram_free_gb=None),
            _peer("mike", "10.0.0.9", status="idle", conflict=True),
        ],
        "sent": [
            {"job_id": "3f9a61c2", "peer": "raj", "script": "/home/you/proj/train.py", "args": ["--epochs", "10"],
             "status": "running", "created": NOW - 75, "why": None},
            {"job_id": "77aa00ff", "peer": None, "script": "eval.py", "args": [], "status": "queued",
             "created": NOW - 5, "why": "raj: busy (2/2 jobs)"},
        ],
        "here": [
            {"job_id": "c0ffee11", "from": "mike", "script": "render.py", "args": ["scene.blend"],
             "status": "running", "created": NOW - 3700},
        ],
        "now": NOW,
    }


def _text(state) -> str:
    console = Console(record=True, width=120)
    console.print(render(state))
    return console.export_text()


def test_render_peers_and_jobs():
    text = _text(sample_state())
    for s in ("peers", "jobs", "you (me)", "raj", "mike", "10.0.0.1", "10.0.0.3",
              "busy", "paused", "idle", "(name conflict)", "RTX 4090 (20.5 GB free)", "2/2", "0/0",
              "+42s", "-42s", "3%", "12.5 GB",
              "3f9a61c2", "→ raj", "train.py --epochs 10", "running", "1m15s",
              "77aa00ff", "→ ?", "queued (raj: busy (2/2 jobs))", "5s",
              "c0ffee11", "← mike", "render.py scene.blend", "1h01m", "q quits"):
        assert s in text, f"{s!r} not in:\n{text}"
    # htop-style meters for the CPU in use (3% of 6 blocks rounds to none) and RAM (75% used: 4 of 6, rounded)
    assert "[      ] 3%" in text
    assert "[||||  ] 12.5 GB" in text
    # unknown resources render as ?, never as an error
    mike = next(ln for ln in text.splitlines() if "10.0.0.2" in ln)
    assert "?" in mike and "paused" in mike


def test_karma_that_rounds_to_nothing_is_0s_not_minus_0s():
    state = sample_state()
    state["peers"][0]["karma"] = {"given": 0.2, "taken": 0.4}
    text = _text(state)
    raj = next(ln for ln in text.splitlines() if "10.0.0.1" in ln)
    assert "0s" in raj and "-0s" not in raj, raj


def test_render_without_peers_or_jobs():
    state = sample_state()
    state.update(peers=[], sent=[], here=[])
    text = _text(state)
    assert "you (me)" in text and "no jobs running or queued" in text


@pytest.mark.netns
def test_top_once_on_a_cluster(cluster):
    from jobhelp import Run, gate_path, make_group, project

    raj, you = make_group(cluster, ["raj", "you"], per_host={"you": {"max_jobs": 0}})
    gate = gate_path()
    try:
        proj = project(you, {"wait.py": f"""
            import os, time
            print("waiting", flush=True)
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.05)
        """})
        run = Run(you, proj, "wait.py")
        job = run.job_id()
        run.wait_out("[raj] waiting")
        time.sleep(0.8)  # a heartbeat or two: raj announces its running job
        r = you.homie("top", "--once", env={"COLUMNS": "140"})
        assert r.returncode == 0, r.stderr
        out = r.stdout
        for s in ("you (me)", "raj", raj.ip, you.ip, job, "→ raj", "wait.py", "running", "1/"):
            assert s in out, f"{s!r} not in:\n{out}"
        # this machine as friends reach it, not loopback; no key hint where no key is read
        assert "127.0.0.1" not in out and "q quits" not in out, out
        r = raj.homie("top", "--once", env={"COLUMNS": "140"})
        assert r.returncode == 0, r.stderr
        for s in ("raj (me)", "you", you.ip, job, "← you", "running"):
            assert s in r.stdout, f"{s!r} not in:\n{r.stdout}"
        gate.touch()
        assert run.wait(20) == 0, run.err()
    finally:
        gate.unlink(missing_ok=True)
