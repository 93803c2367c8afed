"""The worker's slot book without a network: capacity, pause, reservations and
the karma-ordered contention for a freed slot, with an injected clock and
no sleeping anywhere."""

from __future__ import annotations

import threading

from homie.worker.slots import CONTENTION_WINDOW, WAIT_TTL, SlotBook, Waiting


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def by_karma(waiting: list[Waiting], karma: dict[str, float]) -> list[Waiting]:
    return sorted(waiting, key=lambda w: (-karma.get(w.submitter, 0.0), w.queued_at))


def book(n: int = 1, clock: Clock | None = None, order=None) -> tuple[SlotBook, Clock]:
    clock = clock or Clock()
    return SlotBook("raj", n, order=order, clock=clock, wall=clock), clock


def test_capacity_is_taken_at_admission_not_after_the_upload():
    b, _ = book(2)
    assert b.admit("a", "you").granted and b.admit("b", "you").granted
    refused = b.admit("c", "you")
    assert not refused.granted and refused.code == "busy" and "2/2" in refused.reason
    assert b.used() == 2 and b.free() == 0


def test_a_failed_upload_gives_the_slot_back_and_a_job_keeps_it_until_it_ends():
    b, _ = book(1)
    assert b.admit("a", "you").granted
    b.release("a")  # upload refused
    assert b.free() == 1
    assert b.admit("b", "you").granted
    b.hold("b")
    assert b.has("b") and not b.admit("c", "mike").granted
    b.release("b")
    assert not b.has("b")


def test_paused_refuses_with_its_own_code():
    b, _ = book(2)
    b.paused = True
    a = b.admit("a", "you")
    assert (a.granted, a.code) == (False, "paused") and b.free() == 0


def test_a_freed_slot_goes_by_karma_after_the_contention_window():
    b, clock = book(1, order=by_karma)
    karma = {"mike": 50.0, "you": 1.0}
    assert b.admit("run", "raj-friend").granted
    b.hold("run")
    # Both ask while it is full; you first.
    assert not b.admit("y", "you", karma).granted
    clock.t += 0.1
    assert not b.admit("m", "mike", karma).granted
    clock.t += 0.1
    b.release("run")  # was full: contended
    refused = b.admit("y", "you", karma)
    assert not refused.granted and "choosing" in refused.reason
    clock.t += CONTENTION_WINDOW
    refused = b.admit("y", "you", karma)
    assert not refused.granted and "goes to mike's job" in refused.reason
    assert b.admit("m", "mike", karma).granted


def test_arrival_order_without_an_order_plugin():
    b, clock = book(1)
    b.admit("run", "x")
    b.hold("run")
    b.admit("first", "you")
    clock.t += 0.5
    b.admit("second", "mike")
    b.release("run")
    clock.t += CONTENTION_WINDOW
    assert not b.admit("second", "mike").granted
    assert b.admit("first", "you").granted


def test_a_submitter_that_stopped_asking_is_forgotten():
    b, clock = book(1, order=by_karma)
    b.admit("run", "x")
    b.hold("run")
    b.admit("gone", "mike", {"mike": 99.0})
    clock.t += WAIT_TTL + 1
    b.release("run")
    clock.t += CONTENTION_WINDOW + WAIT_TTL + 1
    assert b.admit("here", "you", {"mike": 99.0}).granted


def test_admission_is_atomic_under_threads():
    b, _ = book(3)
    granted = []
    barrier = threading.Barrier(20)

    def ask(i):
        barrier.wait()
        if b.admit(f"j{i}", "you").granted:
            granted.append(i)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 3 and b.used() == 3


def test_one_submitters_own_jobs_need_no_contest():
    b, clock = book(1, order=by_karma)
    b.admit("run", "you")
    b.hold("run")
    b.admit("next", "you")  # refused: full
    b.release("run")
    assert b.admit("next", "you").granted  # nobody else asks here: no window to sit out


def test_a_contender_that_has_not_asked_yet_still_gets_the_window():
    """The slot frees while two friends' submitters only watch the heartbeats: the
    first to ask must wait for the window, or the faster packet wins, not karma."""
    b, clock = book(1, order=by_karma)
    karma = {"giver": 5.0}
    b.admit("hold", "w")
    b.hold("hold")
    b.release("hold")
    refused = b.admit("t", "taker", karma)
    assert not refused.granted and refused.retry_after
    clock.t += 0.05
    assert not b.admit("g", "giver", karma).granted
    clock.t += CONTENTION_WINDOW
    assert not b.admit("t", "taker", karma).granted
    assert b.admit("g", "giver", karma).granted


def test_a_contest_says_when_to_ask_again():
    b, clock = book(1, order=by_karma)
    b.admit("run", "x")
    b.hold("run")
    b.admit("m", "mike")
    b.release("run")
    clock.t += 0.1
    refused = b.admit("y", "you")
    assert not refused.granted and abs(refused.retry_after - (CONTENTION_WINDOW - 0.1)) < 1e-9
