"""Streaming a job's output and state changes to a control connection until it
ends (`homie run`, `attach`, `logs -f`, `wait`): a job sent from here, followed
through its log and record, or a friend's job running here, through the
worker's log of it."""

from __future__ import annotations

import time
from typing import Any

from homie.control import replies
from homie.errors import EXIT_FAILURE, HomieError
from homie.joblog import read_records
from homie.submit.job import Job, JobState

FOLLOW_POLL = 0.1
PROGRESS_EVERY = 0.2


def ended(job: Job) -> replies.Ended:
    """The last message of a follow: how the job ended (or where it is, if not over)."""
    d = job.doc
    return replies.Ended(
        job_id=job.id, state=d["state"], exit_code=d["exit_code"], code=d["code"], signal=d["signal"],
        reason=d["reason"], message=d["message"], peer=d["peer_name"], results=d["results"] or [],
        results_dir=str(job.results_dir), offset=job.log.end, terminal=job.terminal)


def sent(ch: Any, job: Job, offset: int, live: bool) -> replies.Ended:
    """Stream a job sent from here from `offset`, with its state changes, until it ends
    (live) or until what its log holds now has been sent; then how it ended, to reply."""
    last_why = None
    last_sent = None
    started_sent = False
    last_progress = 0.0
    while True:
        # Events follow what has happened, not the state seen right now: a
        # fast job may already be running when we first look.
        if job.state == JobState.QUEUED and job.why and job.why != last_why:
            last_why = job.why
            ch.send("event", kind="queued", job_id=job.id, why=job.why)
        attempt = (job.peer_name, job.dispatches)
        if job.peer_name and attempt != last_sent:
            last_sent = attempt
            started_sent = False
            ch.send("event", kind="sending", job_id=job.id, peer=job.peer_name, via=job.via,
                    files=job.upload_files, bytes=job.upload_bytes)
        if job.started_at and not started_sent and job.state != JobState.UPLOADING:
            started_sent = True
            if (job.attempt or 1) > 1:
                ch.send("event", kind="resumed", job_id=job.id, peer=job.peer_name, attempt=job.attempt,
                        checkpoint_at=job.restored_at)
            ch.send("event", kind="started", job_id=job.id, peer=job.peer_name)
        p = job.progress
        if p and time.monotonic() - last_progress > PROGRESS_EVERY:
            last_progress = time.monotonic()
            ch.send("event", kind="progress", job_id=job.id, **p)
        # Nothing past what the log says it wrote: no file to open (this loop turns
        # every FOLLOW_POLL for every job followed).
        recs = read_records(job.log.path, offset) if offset < job.log.end else []
        for stream, end, data in recs:
            ch.send_output(stream, end, data)
            offset = end
        if recs:
            continue
        # Over first, then the log's end: output is appended before the job is marked
        # over, so read the other way round the last output could be missed.
        if (job.terminal or not live) and offset >= job.log.end:
            return ended(job)
        _wait_for_more(job, offset)


def here(ch: Any, worker: Any, store: Any, name: str, job_id: str, offset: int, live: bool) -> replies.Ended:
    """`homie logs` on the lending machine: a friend's job running (or just run) here;
    then where it stands, to reply."""
    found = worker.find(job_id)
    if len(found) > 1:
        raise HomieError(f"job id {job_id!r} is ambiguous: {', '.join(j.id for j in found)}", EXIT_FAILURE)
    if not found:
        for e in store.ledger_entries():
            if e["direction"] == "given" and e["job_id"].startswith(job_id):
                raise HomieError(f"job {e['job_id']} ran here for {e['peer']} and is over; its output went"
                                 f" back to {e['peer']}, who keeps it (homie logs {e['job_id']} there)",
                                 EXIT_FAILURE)
        raise HomieError(f"no job {job_id!r} (see `homie ps --all`)", EXIT_FAILURE)
    wj = found[0]
    ch.send("event", kind="job", job_id=wj.id)
    while True:
        recs = read_records(wj.log.path, offset)
        for stream, end, data in recs:
            ch.send_output(stream, end, data)
            offset = end
        if recs:
            continue
        done = wj.done.is_set()
        if done or not live:
            s = wj.summary()
            return replies.Ended(
                job_id=wj.id, state="done" if done else s["status"], exit_code=s["code"], code=s["code"],
                signal=None, reason=s["reason"], message=None, peer=name, results=[],
                results_dir="", offset=offset, terminal=done)
        wj.done.wait(FOLLOW_POLL)


def _wait_for_more(job: Job, offset: int) -> None:
    """Until the job's log grows past offset or the job ends, FOLLOW_POLL at most (state
    changes are looked at that often). Its log is finished from the job's exit until its
    results are home: JobLog.wait would return at once all that time, and the follow
    loop would spin. Ending the job finishes its log again, which wakes this."""
    log = job.log
    with log.cond:
        if log.end <= offset and not job.terminal:
            log.cond.wait(FOLLOW_POLL)


def wait_until_over(job: Job) -> None:
    """Until the job is over (homie wait): no output is read or sent meanwhile."""
    with job.cond:
        while not job.terminal:
            job.cond.wait(1.0)
