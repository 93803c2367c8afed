"""What the daemon does for each control request from the CLI (one method per verb)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homie import __version__, plugins
from homie.control import follow, replies
from homie.errors import EXIT_FAILURE, EXIT_USAGE, HomieError
from homie.submit.job import JobState
from homie.wire import classes as messages

if TYPE_CHECKING:
    from homie.discovery.peers import Peer, PeerTable
    from homie.discovery.service import Discovery
    from homie.home import Home
    from homie.karma import Karma
    from homie.store import Store
    from homie.submit.dial import Dialer
    from homie.submit.schedd import Submitter
    from homie.worker.startd import Worker

PS_BATCH = 200
ARGS_SHOWN = 2000  # characters of a job's arguments that ps and top show


def _short_args(args: list) -> tuple[list, bool]:
    """The arguments, cut to what a listing needs (a job may have 100 000 of them)."""
    shown: list = []
    size = 0
    for a in args:
        if size + len(a) > ARGS_SHOWN:
            return shown + [f"… ({len(args) - len(shown)} more)"], True
        shown.append(a)
        size += len(a) + 1
    return shown, False


def _job_log_facts(path, tail: int = 8 << 20) -> dict[str, dict]:
    """job id -> {script, code} from the daemon's own log (its last `tail` bytes)."""
    import json

    facts: dict[str, dict] = {}
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - tail))
            data = f.read()
    except OSError:
        return facts
    for line in data.splitlines():
        if b'"job.accepted"' not in line and b'"job.exited"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        d = facts.setdefault(rec.get("job_id"), {})
        if rec.get("event") == "job.accepted":
            d["script"] = rec.get("script")
        else:
            d["code"] = rec.get("code")
    return facts


@dataclass(frozen=True)
class Services:
    """What control requests may use: the daemon's parts, given by daemon.py."""

    name: str
    instance_hex: str
    started: float
    key_fingerprint: str
    config: Any
    home: Home
    peers: PeerTable
    karma: Karma
    store: Store
    worker: Worker
    submitter: Submitter
    discovery: Discovery
    dial: Dialer
    bind_address: str | None
    local_peer: Callable[[], Peer]
    announce_soon: Callable[[], None]
    request_shutdown: Callable[[], None]


class Handlers:
    def __init__(self, services: Services, ch):
        self.services = services
        self.ch = ch

    def reply(self, r: replies.Reply) -> None:
        self.ch.send("reply", **r.body())

    # -- node ----------------------------------------------------------------------
    def do_status(self, req: messages.StatusRequest) -> None:
        n = self.services
        address = self._address()
        self.reply(replies.Status(
            running=True, name=n.name, pid=os.getpid(), version=__version__, uptime=time.time() - n.started,
            address=address, port=n.config.port, discovery_port=n.config.discovery_port,
            peers=len(n.peers.snapshot()), status=n.worker.status(), jobs_here=n.worker.running(),
            jobs_out=sum(1 for j in n.submitter.all() if not j.terminal),
            discovery=[b.name for b in n.discovery.backends], broadcast=n.discovery.broadcast_addresses(),
            home=str(n.home.root), key_fingerprint=n.key_fingerprint, instance=n.instance_hex,
            retries=n.config.retries, sandbox=n.worker.sandbox.label, sandbox_reason=n.worker.sandbox.reason,
        ))

    def _address(self) -> str:
        """The address friends reach this machine on (not loopback, unless that is all there is)."""
        n = self.services
        ifaces = n.discovery.interfaces()
        return n.bind_address or (ifaces[0]["address"] if ifaces else "127.0.0.1")

    def do_peers(self, req: messages.PeersRequest) -> None:
        me = self.services.local_peer().to_dict()
        me["ip"] = self._address()
        self.reply(replies.Peers(peers=[p.to_dict() for p in self.services.peers.snapshot()], me=me))

    def do_down(self, req: messages.Down) -> None:
        self.reply(replies.Stopping(stopping=True, name=self.services.name))
        self.services.request_shutdown()

    def do_pause(self, req: messages.Pause) -> None:
        evicting = [j.id for j in self.services.worker.all_jobs() if not j.done.is_set()] if req.evict else []
        self.services.worker.pause(bool(req.suspend), evict=bool(req.evict))
        self.services.announce_soon()
        self.reply(replies.Paused(status="paused", suspended=self.services.worker.suspended, evicted=len(evicting),
                                  grace=self.services.config.evict_grace_seconds))

    def do_resume(self, req: messages.Resume) -> None:
        self.services.worker.resume()
        self.services.announce_soon()
        self.reply(replies.Resumed(status=self.services.worker.status()))

    def do_plugins(self, req: messages.PluginsRequest) -> None:
        self.reply(replies.Plugins(plugins=plugins.describe()))

    def do_karma(self, req: messages.KarmaRequest) -> None:
        self.reply(replies.KarmaBook(ledger=self.services.karma.per_peer(), totals=self.services.karma.totals(),
                                     entries=self.services.store.ledger_entries()))

    def do_doctor(self, req: messages.Doctor) -> None:
        from homie.doctor import diagnose

        self.reply(replies.Findings(findings=diagnose(self.services)))

    # -- jobs -------------------------------------------------------------------------
    def do_ps(self, req: messages.Ps) -> None:
        """Jobs in batches of events, then a reply: however many jobs and however long
        their arguments, no message comes near the frame cap."""
        show_all = bool(req.all)
        out = []
        for job in self.services.submitter.all():
            if job.terminal and not show_all:
                continue
            s = job.summary()
            s["side"] = "out"
            s["args"], s["args_cut"] = _short_args(s["args"])
            out.append(s)
        here = []
        live = set()
        for wj in sorted(self.services.worker.all_jobs(), key=lambda j: j.created):
            live.add(wj.id)
            if wj.state not in ("preparing", "running") and not show_all:
                continue
            s = wj.summary()
            s["side"] = "here"
            s["args"], s["args_cut"] = _short_args(s["args"])
            here.append(s)
        if show_all:
            here = sorted(here + self._ran_here(live), key=lambda j: j["created"])
        for i in range(0, max(len(out), len(here)), PS_BATCH):
            self.ch.send("event", kind="ps", jobs=out[i:i + PS_BATCH], here=here[i:i + PS_BATCH])
        self.reply(replies.Listed(now=time.time()))

    def _ran_here(self, live: set) -> list[dict]:
        """Jobs run here for friends that are over and gone from the worker: the karma
        ledger keeps each one (who, when, how long); the worker's history its script,
        arguments and exit (the daemon's log, for jobs that ran before there was one)."""
        seen = _job_log_facts(self.services.home.log)
        history = self.services.store.worker_history()
        out = []
        for e in self.services.store.ledger_entries():
            if e["direction"] != "given" or e["job_id"] in live:
                continue
            facts = history.get(e["job_id"]) or seen.get(e["job_id"], {})
            out.append({"job_id": e["job_id"], "from": e["peer"], "script": facts.get("script"),
                        "args": facts.get("args") or [],
                        "args_cut": False, "status": "finished", "created": e["at"] - (e["wall_s"] or 0.0),
                        "pid": None, "code": facts.get("code"), "reason": None, "side": "here",
                        "cpu_s": e["cpu_s"], "wall_s": e["wall_s"]})
        return out

    def _one_job(self, job_id: str):
        found = self.services.submitter.find(job_id)
        if not found:
            raise HomieError(f"no job {job_id!r} (see `homie ps --all`)", EXIT_FAILURE)
        if len(found) > 1:
            raise HomieError(f"job id {job_id!r} is ambiguous: {', '.join(j.id for j in found)}", EXIT_FAILURE)
        return found[0]

    def do_kill(self, req: messages.Kill) -> None:
        from homie.control.server import signal_number

        sig = signal_number(req.sig or signal.SIGKILL)
        job_id = req.job_id
        mine = self.services.submitter.find(job_id)
        here = self.services.worker.find(job_id)
        if len(mine) + len(here) == 0:
            raise HomieError(f"no job {job_id!r} here or sent from here (see `homie ps --all`)", EXIT_FAILURE)
        if len(mine) + len(here) > 1 and not (len(mine) == 1 and len(here) == 1 and mine[0].id == here[0].id):
            raise HomieError(f"job id {job_id!r} is ambiguous", EXIT_FAILURE)
        if mine:
            what = self.services.submitter.signal(mine[0], sig)
        else:
            job = here[0]
            if job.done.is_set():
                raise HomieError(f"job {job.id} already ended", EXIT_FAILURE)
            self.services.worker.signal_job(job, sig, by=f"{self.services.name}'s owner")
            what = (f"stopping job {job.id} (running here for {job.submitter}): SIGTERM, then SIGKILL after 2 s"
                    if sig == signal.SIGKILL else
                    f"sent {signal.Signals(sig).name} to job {job.id} (running here for {job.submitter})")
        self.reply(replies.Signalled(message=what))

    def do_run(self, req: messages.Run) -> None:
        # The submitter reads the request as a dict of the fields that were given.
        # Shallow: asdict's deep copy of every argument and file name was a tenth of a map job's intake.
        body = {f.name: v for f in dataclasses.fields(req) if (v := getattr(req, f.name)) is not None}
        if body.get("explain"):
            self._explain(body)
            return
        self._submit_and_follow(body)

    def _submit_and_follow(self, body: dict) -> None:
        job = self.services.submitter.submit(body)
        self.ch.send("event", kind="job", job_id=job.id)
        if body.get("detach"):
            self.reply(replies.Detached(job_id=job.id, detached=True))
            return
        self.reply(follow.sent(self.ch, job, 0, live=True))

    def do_restart(self, req: messages.Restart) -> None:
        old = self._one_job(req.job_id)
        body = self.services.submitter.request_of(old)
        body["detach"] = bool(req.detach)
        self._submit_and_follow(body)

    def _explain(self, body) -> None:
        """What `run` would do, judged the same way as the queue judges the real job:
        run now, wait (every obstacle is temporary) or never (unknown peer, no GPU...)."""
        from homie import scheduling

        sub = self.services.submitter
        sub.check_peer(body.get("peer"))
        sub.check_plugins(body)
        req = scheduling.JobRequest(job_id="-", script=body["script"], submitter=self.services.name,
                                    gpu=bool(body.get("gpu")), peer=body.get("peer"),
                                    scheduler=body.get("scheduler") or self.services.config.scheduler,
                                    executor=body.get("executor") or self.services.config.executor)
        cands = sub.candidates()
        chosen, verdicts = scheduling.choose(req, cands, self.services.config)
        why = None
        if chosen:
            verdict = "run"
        elif (why := sub.dispatcher.permanent(req, verdicts)) is not None:
            verdict = "never"
        else:
            verdict, why = "wait", scheduling.why_waiting(verdicts, req)
        self.reply(replies.Explained(chosen=chosen.name if chosen else None, verdict=verdict, why=why, peers=[
            {"name": p.name, "ip": p.ip, "local": p.local, "eligible": not r, "reasons": r} for p, r in verdicts]))

    def do_follow(self, req: messages.Follow) -> None:
        found = self.services.submitter.find(req.job_id)
        if not found:
            self.reply(follow.here(self.ch, self.services.worker, self.services.store, self.services.name,
                                   req.job_id, req.offset or 0, live=bool(req.live)))
            return
        job = self._one_job(req.job_id)
        self.ch.send("event", kind="job", job_id=job.id)
        if req.quiet:
            follow.wait_until_over(job)
            self.reply(follow.ended(job))
            return
        self.reply(follow.sent(self.ch, job, req.offset or 0, live=bool(req.live)))

    def do_job(self, req: messages.JobRequest) -> None:
        """One job sent from here, where it stands (homie.client's Job.info)."""
        job = self._one_job(req.job_id)
        d = job.doc
        summary = job.summary()
        self.reply(replies.Ended(
            job_id=job.id, state=d["state"], exit_code=summary.pop("exit_code"), code=d["code"], signal=d["signal"],
            reason=summary.pop("reason"), message=d["message"], peer=summary.pop("peer"),
            results=d["results"] or [], results_dir=str(job.results_dir), offset=job.log.end, terminal=job.terminal,
            extra={k: v for k, v in summary.items() if k not in ("job_id", "results")}))

    def do_get_results(self, req: messages.GetResults) -> None:
        job = self._one_job(req.job_id)
        if not job.terminal:
            raise HomieError(f"job {job.id} has not finished yet ({job.state})", EXIT_FAILURE)
        if job.state != JobState.DONE:
            raise HomieError(f"job {job.id} ended {job.state}: {job.message or 'no results'}", EXIT_FAILURE)
        if not job.results_dir.exists() and job.results:
            raise HomieError(f"the results of job {job.id} were already collected or removed", EXIT_FAILURE)
        self.reply(replies.Results(job_id=job.id, results=job.results or [], results_dir=str(job.results_dir)))

    def do_forget(self, req: messages.Forget) -> None:
        job = self._one_job(req.job_id)
        if not job.terminal:
            raise HomieError(f"job {job.id} is still {job.state}", EXIT_USAGE)
        self.services.submitter.forget(job)
        self.reply(replies.Forgotten(forgotten=job.id))
