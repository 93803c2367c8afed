"""The worker orders submitters waiting for its slot by karma (homie_order_queue):
a friend who has given compute to the group gets the next slot before one who
has not, even when the latter asked first."""

from __future__ import annotations

import json
import time

import pytest

from test_hardening_netns import make_group, script, up, wait_peers, wait_until

pytestmark = pytest.mark.netns


def test_freed_slot_goes_to_the_submitter_with_more_karma(cluster):
    hosts, _ = make_group(cluster, {"w": {"max_jobs": 1}, "giver": {"max_jobs": 1}, "taker": {"max_jobs": 0}})
    w, giver, taker = hosts["w"], hosts["giver"], hosts["taker"]
    up(w, giver, taker)
    for h in hosts.values():
        wait_peers(h, set(hosts) - {h.name})

    # giver earns karma: it runs a CPU-burning job for w.
    burn = script(w, "burn.py", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n")
    cp = w.homie("run", "-n", "giver", str(burn), cwd=str(burn.parent), timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr

    def giver_balance():
        peers = {p["name"]: p for p in json.loads(w.homie("peers", "--json").stdout)}
        k = peers["giver"].get("karma") or {}
        return float(k.get("given", 0)) - float(k.get("taken", 0))

    wait_until(lambda: giver_balance() > 0.3, 10, msg="giver's karma in its heartbeats")

    # w's only slot is busy; taker asks first, giver a moment later.
    hold = script(w, "hold.py", "import time\ntime.sleep(4)\n")
    busy = w.homie_spawn("run", "-n", "w", str(hold), cwd=str(hold.parent))
    wait_until(lambda: "job started" in busy.log(), 20, msg="w busy with its own job")
    quick_t = script(taker, "quick.py", "print('ran')\n")
    quick_g = script(giver, "quick.py", "print('ran')\n")
    t_run = taker.homie_spawn("run", "-n", "w", str(quick_t), cwd=str(quick_t.parent))
    time.sleep(1.0)
    g_run = giver.homie_spawn("run", "-n", "w", str(quick_g), cwd=str(quick_g.parent))
    assert busy.wait(30) == 0
    assert t_run.wait(40) == 0, t_run.log()
    assert g_run.wait(40) == 0, g_run.log()

    def started(host):
        jobs = json.loads(host.homie("ps", "--all", "--json").stdout)["sent"]
        return max(j["started_at"] for j in jobs if j["peer"] == "w")

    if not started(giver) < started(taker):
        print((w.home / "logs" / "homie.log").read_text()[-8000:])
    assert started(giver) < started(taker), "the freed slot went to the submitter with less karma"
