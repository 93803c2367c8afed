"""The dispatcher without a network: queue order, reservations, refusals, settling,
lost peers and retries, with the built-in scheduler plugins and an injected clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from homie import plugins
from homie.discovery.peers import Peer
from homie.submit.dispatch import Ask, Dispatcher


@dataclass
class Cfg:
    peer_timeout: float = 10.0
    heartbeat_interval: float = 2.0


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def builtins():
    plugins.load_plugins()


def peer(name: str, slots: int = 1, **kw) -> Peer:
    return Peer(name=name, ip="10.0.0.1", port=5556, instance=f"i-{name}", slots_free=slots,
                max_jobs=kw.pop("max_jobs", slots), cpu_percent_idle=kw.pop("idle", 50.0), **kw)


def ask(job_id: str, created: float, **kw) -> Ask:
    return Ask(job_id=job_id, script="x.py", created=created, **kw)


def settled(clock: Clock | None = None) -> Dispatcher:
    clock = clock or Clock()
    return Dispatcher(Cfg(), "me", started=clock.t - 100, clock=clock)


def plan(d: Dispatcher, asks, peers, ours=None):
    return {x.job_id: x for x in d.plan(asks, d.candidates(peers, ours or {}))}


def test_oldest_first_and_one_slot_each():
    d = settled()
    out = plan(d, [ask("b", 2.0), ask("a", 1.0)], [peer("raj", slots=1)])
    assert out["a"].peer.name == "raj"
    assert out["b"].peer is None and "busy" in out["b"].why and out["b"].fail is None


def test_a_reservation_holds_until_released():
    d = settled()
    raj = peer("raj", slots=1)
    assert plan(d, [ask("a", 1.0)], [raj])["a"].peer is not None
    # The next heartbeat may still say 1 free: our reservation says otherwise.
    assert plan(d, [ask("b", 2.0)], [raj])["b"].peer is None
    d.release("a")
    assert plan(d, [ask("b", 2.0)], [raj])["b"].peer is not None


def test_our_running_jobs_count_against_max_jobs():
    d = settled()
    raj = peer("raj", slots=3, max_jobs=2)
    out = plan(d, [ask("a", 1.0)], [raj], ours={"i-raj": 2})
    assert out["a"].peer is None


def test_a_busy_refusal_is_tried_again_soon():
    clock = Clock()
    d = settled(clock)
    d.refuse_briefly("i-raj", 0.3)
    assert plan(d, [ask("a", 1.0)], [peer("raj")])["a"].peer is None
    clock.t += 0.31
    assert plan(d, [ask("a", 1.0)], [peer("raj")])["a"].peer.name == "raj"


def test_a_permanent_refusal_fails_the_job_after_settling_only():
    clock = Clock()
    d = Dispatcher(Cfg(), "me", started=clock.t, clock=clock)
    a = ask("a", 1.0, gpu=True)
    assert plan(d, [a], [peer("raj")])["a"].fail is None  # the peer table is still filling
    clock.t += 10
    out = plan(d, [a], [peer("raj")])["a"]
    assert out.fail and "no GPU" in out.fail


def test_busy_and_paused_peers_make_a_job_wait_not_fail():
    d = settled()
    out = plan(d, [ask("a", 1.0)], [peer("raj", slots=0, max_jobs=2), peer("mike", status="paused")])["a"]
    assert out.fail is None and "raj: busy" in out.why and "mike: paused" in out.why


def test_refused_peers_are_skipped_and_named_when_nothing_is_left():
    d = settled()
    a = ask("a", 1.0, refused_by={"i-raj": "raj: no executor 'venv'"})
    out = plan(d, [a], [peer("raj")])["a"]
    assert out.fail and "refused by raj: no executor 'venv'" in out.fail
    assert plan(d, [a], [peer("raj"), peer("mike")])["a"].peer.name == "mike"


def test_a_pinned_peer_that_is_gone_fails_the_job():
    d = settled()
    out = plan(d, [ask("a", 1.0, peer="zed")], [peer("raj")])["a"]
    assert out.fail == "peer 'zed' is not online"


def test_a_lost_peer_is_avoided_but_a_checkpointed_job_returns_when_it_is_the_only_one():
    d = settled()
    raj, mike = peer("raj", idle=90.0), peer("mike", idle=10.0)
    lost = frozenset({"i-raj"})
    assert plan(d, [ask("a", 1.0, lost_on=lost)], [raj, mike])["a"].peer.name == "mike"
    d.release("a")
    assert plan(d, [ask("b", 1.0, lost_on=lost)], [raj])["b"].peer is None  # a plain job waits
    assert plan(d, [ask("c", 1.0, lost_on=lost, may_return=True)], [raj])["c"].peer.name == "raj"


def test_candidates_are_copies():
    d = settled()
    raj = peer("raj", slots=2)
    d.reserve("i-raj", "x")
    [c] = d.candidates([raj], {})
    assert c.slots_free == 1 and raj.slots_free == 2


def test_the_local_machine_is_the_last_resort():
    d = settled()
    me = peer("me", idle=100.0, local=True)
    out = plan(d, [ask("a", 1.0), ask("b", 2.0)], [me, peer("raj", idle=5.0)])
    assert out["a"].peer.name == "raj" and out["b"].peer.name == "me"


def test_while_every_slot_is_taken_queued_jobs_wait_unjudged_until_the_rejudge():
    from homie.submit.dispatch import REJUDGE_EVERY

    clock = Clock()
    d = settled(clock)
    raj = peer("raj", slots=1)
    first = plan(d, [ask("a", 1.0), ask("b", 2.0)], [raj])
    assert first["a"].peer.name == "raj"
    assert first["b"].judged and "busy" in first["b"].why  # the pass that judged everyone
    # Same moment, raj still full (our reservation): nobody is judged, nobody fails.
    again = plan(d, [ask("b", 2.0), ask("c", 3.0, peer="zed")], [raj])
    assert not again["b"].judged and again["b"].peer is None and again["b"].fail is None
    assert not again["c"].judged and again["c"].fail is None
    clock.t += REJUDGE_EVERY
    later = plan(d, [ask("b", 2.0), ask("c", 3.0, peer="zed")], [raj])
    assert later["b"].judged and "busy" in later["b"].why
    assert later["c"].fail == "peer 'zed' is not online"


def test_a_slot_that_frees_is_used_at_once_not_at_the_next_rejudge():
    clock = Clock()
    d = settled(clock)
    raj = peer("raj", slots=1)
    assert plan(d, [ask("a", 1.0)], [raj])["a"].peer.name == "raj"
    assert not plan(d, [ask("b", 2.0)], [raj])["b"].judged
    d.release("a")  # a started: the next heartbeat's free slot is ours again
    out = plan(d, [ask("b", 2.0), ask("c", 3.0)], [raj])
    assert out["b"].peer.name == "raj"
    assert not out["c"].judged  # b took the last slot: c waits unjudged


def test_a_pass_is_worth_making_only_with_a_free_slot_or_a_rejudge_due():
    from homie.submit.dispatch import REJUDGE_EVERY

    clock = Clock()
    d = settled(clock)
    raj = peer("raj", slots=1)
    assert d.worth_a_pass(d.candidates([raj], {}))
    plan(d, [ask("a", 1.0)], [raj])  # takes raj's slot, and judges everyone
    assert not d.worth_a_pass(d.candidates([raj], {}))
    clock.t += REJUDGE_EVERY
    assert d.worth_a_pass(d.candidates([raj], {}))
    assert d.worth_a_pass([])  # no peer at all: a pass fails what can never run


def test_a_wall_clock_stepped_back_neither_holds_off_the_rejudge_nor_stretches_a_refusal():
    clock = Clock()
    d = settled(clock)
    raj = peer("raj", slots=1)
    plan(d, [ask("a", 1.0)], [raj])  # the rejudge at t, raj now full
    clock.t -= 3600  # a laptop waking up with its clock set back
    assert d.worth_a_pass(d.candidates([raj], {}))
    assert plan(d, [ask("c", 3.0, peer="zed")], [raj])["c"].fail == "peer 'zed' is not online"
    d.refuse_briefly("i-mike", 0.3)
    clock.t -= 3600
    assert plan(d, [ask("b", 2.0)], [peer("mike")])["b"].peer.name == "mike"


def test_without_the_builtin_eligibility_every_pass_judges():
    from homie.submit.dispatch import ELIGIBILITY

    d = settled()
    raj = peer("raj", slots=1)
    plan(d, [ask("a", 1.0)], [raj])
    assert not d.worth_a_pass(d.candidates([raj], {}))
    module = plugins.pm.unregister(name=ELIGIBILITY)
    try:
        # A replacement might take a peer with no free slot: nothing may be skipped.
        assert d.worth_a_pass(d.candidates([raj], {}))
        assert plan(d, [ask("b", 2.0)], [raj])["b"].judged
    finally:
        plugins.pm.register(module, name=ELIGIBILITY)
