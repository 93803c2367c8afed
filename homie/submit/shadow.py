"""The shadow: drives one submitted job from upload to results (HTCondor's
name for the submit side's per-job driver). One thread per job, created by
the queue (homie.submit.schedd); what happens when an attempt is lost or
evicted is homie.submit.attempts."""

from __future__ import annotations

import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from homie.errors import EXIT_INTERNAL, EXIT_TRANSFER, HomieError, ProtocolError
from homie.submit import transfer
from homie.submit.attempts import Attempts, Lost
from homie.submit.dial import CONNECT_TIMEOUT
from homie.submit.dispatch import MAX_BRIEF_REFUSAL
from homie.submit.job import Job, JobState
from homie.wire.channel import Channel, ConnectionClosed
from homie.wire.protocol import Data, Message, Output

STREAM_TIMEOUT = 8.0  # the worker pings every 2 s; silence this long means the link is down
STREAM_QUIET = 3.0  # silence after which a peer without heartbeats counts as gone
PROBE_TIMEOUT = 1.5  # a peer without heartbeats that does not answer within this is lost


def _auth(job: Job) -> dict:
    """The job's token for the worker, where it has one (jobs queued before tokens have none)."""
    return {"token": job.token} if job.token else {}


@dataclass(frozen=True)
class Me:
    """This daemon as its jobs' drivers need to know it."""

    name: str
    instance: str
    started: float


class Shadow(Attempts):
    def __init__(self, config, log, me: Me, dial, peers, karma, dispatch, intake, save: Callable[[Job], None],
                 kick: Callable[[], None]):
        self.config = config
        self.log = log
        self.me = me
        self.dial = dial
        self.peers = peers
        self.karma = karma
        self.dispatch = dispatch
        self.intake = intake
        self.save = save
        self.kick = kick

    def start(self, job: Job) -> None:
        job.thread = threading.Thread(target=self._drive, args=(job,), name=f"submit-{job.id}", daemon=True)
        job.thread.start()

    def _drive(self, job: Job) -> None:
        try:
            if job.state == JobState.UPLOADING:
                self._send(job)
            if job.state == JobState.RUNNING:
                self._follow(job)
            if job.state == JobState.FETCHING:
                self._fetch(job)
        except HomieError as e:
            self._finish(job, JobState.FAILED, message=str(e), exit_code=e.exit_code)
        except Exception as e:
            self.log.exception("job.driver_crashed", job_id=job.id)
            self._finish(job, JobState.FAILED, message=f"internal error: {type(e).__name__}: {e}",
                         exit_code=EXIT_INTERNAL)
        finally:
            self.dispatch.release(job.id)
            self.kick()

    def _send(self, job: Job) -> None:
        if job.manifest is None:
            self.intake.collect(job)
        try:
            ch = self.dial.connect_warm(job.peer_ip, job.peer_port)
        except ConnectionClosed as e:
            self._requeue(job, f"could not reach {job.peer_name}: {e}")
            return
        job.channel = ch
        try:
            ch.send("submit", job_id=job.wire_id, script=job.script, args=job.args,
                    files=[e.to_dict() for e in job.manifest or []], submitter=self.me.name,
                    executor=job.executor or "auto", gpu=bool(job.gpu), **self._job_settings(job), **_auth(job))
            reply = ch.recv_msg("need", "refuse", "error", timeout=30)
            if reply.t == "refuse":
                if reply["code"] in ("busy", "paused"):
                    # Short: the worker may be holding its next slot for us after a karma decision.
                    wait = min(MAX_BRIEF_REFUSAL, max(0.05, float(reply.get("retry_after") or 0.3)))
                    self.dispatch.refuse_briefly(job.peer_instance, wait)
                    threading.Timer(wait, self.kick).start()  # ask again as soon as it makes sense
                else:
                    # It will never take this job (no GPU, no such executor...): ask others.
                    why = f"{job.peer_name}: {reply['reason']}"
                    job.update(refusals={**(job.refusals or {}), job.peer_instance: why})
                at = (job.peer_ip, job.peer_port)
                self._requeue(job, reply["reason"])  # forgets the peer
                self.dial.give_back(*at, ch)  # at rest after a refusal: the next job's
                return
            if reply.t == "error":
                ch.close()
                raise HomieError(f"{job.peer_name} refused the job: {reply['message']}", EXIT_INTERNAL)
            # A link may drop for a while mid-upload: TCP rides it out as long as
            # the peer is alive, so wait well beyond the per-frame default.
            ch.sock.settimeout(max(30.0, 3 * self.config.peer_timeout))
            try:
                self._upload(job, ch, reply["hashes"])
            except (ConnectionClosed, OSError) as e:
                # The worker may have said why before closing (disk full...).
                why = f"upload to {job.peer_name} failed: {self._last_word(ch) or e}"
                if self._retry_upload(job, ch, why):
                    return
                raise HomieError(why, EXIT_TRANSFER) from None
            # started_at comes with the worker's "started". The local log's end is saved
            # with the remote offset (0 here), so a restart never mirrors output twice.
            job.update(state=JobState.RUNNING, remote_offset=0, log_end=job.log.end)
            self.save(job)
            self._stream(job, ch)
        except (TimeoutError, ConnectionClosed, OSError) as e:
            ch.close()
            if job.state == JobState.UPLOADING:
                if self._retry_upload(job, ch, f"upload to {job.peer_name} failed: {e}"):
                    return
                raise HomieError(f"upload to {job.peer_name} failed: {e}", EXIT_TRANSFER) from None
            # the job runs on: _follow reconnects
        except ProtocolError as e:
            ch.close()
            raise HomieError(f"{job.peer_name} broke the protocol: {e}", EXIT_INTERNAL) from None

    def _job_settings(self, job: Job) -> dict:
        """The optional `submit` fields, only when set: env (str -> str), timeout
        (seconds), stdin (the manifest path of the job's stdin)."""
        out: dict[str, object] = {"checkpoint_interval": float(self.config.checkpoint_interval)}
        if job.env:
            out["env"] = dict(job.env)
        if job.timeout is not None:
            out["timeout"] = float(job.timeout)
        if job.stdin:
            out["stdin"] = job.stdin
        if job.checkpoints:
            out["checkpoints"] = list(job.checkpoints)
        if (job.attempt or 1) > 1:
            out["attempt"] = job.attempt
        return out

    @staticmethod
    def _last_word(ch: Channel) -> str | None:
        """The worker's error, if it said why it closed the upload (disk full...).
        The state machine allows it: an error ends UPLOAD and STARTING alike."""
        try:
            while True:
                ev = ch.recv(timeout=1.0)
                if isinstance(ev, Message) and ev.t == "error":
                    return ev["message"]
        except Exception:
            return None

    def _upload(self, job: Job, ch: Channel, need: list) -> None:
        by_sha = {e.sha256: e for e in job.manifest or []}
        if not all(isinstance(h, str) and h in by_sha for h in need):
            raise ProtocolError("the peer asked for files that are not in the job")
        total = sum(by_sha[h].size for h in need)
        job.update(sent_bytes=0)
        job.progress = {"phase": "upload", "done": 0, "total": total, "files": len(need)}
        # The same watchdog as for output: a peer that vanished mid-upload is
        # noticed after its heartbeats stop, not after the socket's long timeout.
        quiet = {"since": time.monotonic()}
        done = threading.Event()
        threading.Thread(target=self._watch_stream, args=(job, ch, quiet, done), name=f"watch-up-{job.id}",
                         daemon=True).start()
        try:
            transfer.upload_blobs(job, ch, need, by_sha, quiet)
        except (ConnectionClosed, OSError) as e:
            if not self._peer_alive(job):
                raise ConnectionClosed(f"{job.peer_name} went away (no heartbeat for"
                                       f" {self.config.peer_timeout:g} s)") from None
            raise e
        finally:
            done.set()
        ch.send("upload_done")
        job.update(sent_bytes=job.progress["done"])
        job.progress = None

    def _stream(self, job: Job, ch: Channel) -> None:
        """Mirror output until exit; returns normally at exit, raises on a dropped link."""
        # A machine that vanishes (power, cable) sends no FIN: cut the stream as soon as it
        # is quiet and the peer's heartbeats stopped too, not only after STREAM_TIMEOUT.
        quiet = {"since": time.monotonic()}
        done = threading.Event()
        threading.Thread(target=self._watch_stream, args=(job, ch, quiet, done), name=f"watch-{job.id}",
                         daemon=True).start()
        try:
            self._stream_frames(job, ch, quiet)
        finally:
            done.set()

    def _watch_stream(self, job: Job, ch: Channel, quiet: dict, done: threading.Event) -> None:
        while not done.wait(0.25):
            if time.monotonic() - quiet["since"] > STREAM_QUIET and not self._peer_alive(job):
                try:
                    socket.socket.shutdown(ch.sock, socket.SHUT_RDWR)  # the blocked recv() returns
                except OSError:
                    pass
                return

    def _stream_frames(self, job: Job, ch: Channel, quiet: dict) -> None:
        saved_at = time.monotonic()
        while True:
            ev = ch.recv(timeout=STREAM_TIMEOUT)
            quiet["since"] = time.monotonic()
            if isinstance(ev, Output):
                # The local log's end goes with the remote offset: a restart resumes from
                # the saved pair, so nothing is mirrored twice.
                job.update(log_end=job.log.append(ev.stream, ev.data), remote_offset=ev.end)
                if time.monotonic() - saved_at > 1.0:
                    self.save(job)
                    saved_at = time.monotonic()
                continue
            if isinstance(ev, Data):
                raise ProtocolError("unexpected data frame")
            if ev.t == "started":
                self.dispatch.release(job.id)
                job.update(state=JobState.RUNNING, started_at=job.started_at or time.time())
                self.log.info("job.started", job_id=job.id, peer=job.peer_name)
                continue
            if ev.t in ("ping", "pong"):
                continue
            if ev.t == "checkpoint":
                self._syncer(job).want(ev["seq"])
                continue
            if ev.t == "exit":
                code = ev["code"]
                if ev.get("evicted"):
                    # Its owner took the machine back: the last checkpoint comes home, then it runs on elsewhere.
                    job.update(state=JobState.FETCHING, evicted={"seq": ev.get("checkpoint") or 0,
                                                          "why": ev.get("reason") or "evicted"},
                               cpu_s=ev.get("cpu_s", 0.0), wall_s=ev.get("wall_s", 0.0))
                else:
                    job.update(state=JobState.FETCHING, code=code, signal=ev.get("signal"), reason=ev.get("reason"),
                               cpu_s=ev.get("cpu_s", 0.0), wall_s=ev.get("wall_s", 0.0),
                               gpu_s=ev.get("gpu_s", 0.0))
                    job.results_told = ev.get("results")
                    job.log.finish()
                self.save(job)
                self.karma.record(job.peer_name, given=False, cpu_s=ev.get("cpu_s", 0.0),
                                       wall_s=ev.get("wall_s", 0.0), gpu_s=ev.get("gpu_s", 0.0),
                                       job_id=job.wire_id)
                job.channel = ch  # back in IDLE: the results come over this same connection
                return
            if ev.t == "error":
                if ev.get("code") == "unknown_job":
                    raise Lost(ev["message"])
                raise HomieError(f"{job.peer_name}: {ev['message']}", EXIT_INTERNAL)

    def _peer_alive(self, job: Job) -> bool:
        if job.peer_instance == self.me.instance:
            return True
        if self.peers.get(job.peer_instance) is not None:
            return True
        # Just (re)started: no heartbeat had time to arrive yet. A peer counts as gone
        # only after peer_timeout without one, counted from our own start.
        return time.time() - self.me.started < self.config.peer_timeout

    def _follow(self, job: Job) -> None:
        """(Re)attach to a running job until it exits, surviving dropped links."""
        while job.state == JobState.RUNNING:
            # Lost means silent *and* unreachable: a worker too busy to heartbeat on
            # time (a laptop under load) still answers, and keeps its job. A silent
            # one gets a short try, so a vanished machine is noticed soon after peer_timeout.
            alive = self._peer_alive(job)
            try:
                ch = self.dial.connect(job.peer_ip, job.peer_port, timeout=CONNECT_TIMEOUT if alive else PROBE_TIMEOUT)
            except ConnectionClosed:
                if not alive and not self._peer_alive(job):
                    self._lost(job, f"{job.peer_name} went away (no heartbeat for {self.config.peer_timeout:g} s)")
                    return
                time.sleep(0.5)
                continue
            try:
                ch.send("attach", job_id=job.wire_id, offset=job.remote_offset or 0, **_auth(job))
                self._stream(job, ch)
            except Lost as e:
                self._lost(job, f"{job.peer_name} no longer has the job: {e}")
                ch.close()
                return
            except (TimeoutError, ConnectionClosed, OSError):
                ch.close()
                time.sleep(0.2)
            except ProtocolError as e:
                ch.close()
                raise HomieError(f"{job.peer_name} broke the protocol: {e}", EXIT_INTERNAL) from None

    def _fetch(self, job: Job) -> None:
        if job.evicted:
            self._fetch_evicted(job)
            return
        tries = 0
        while True:
            try:
                ch, job.channel = job.channel, None
                at = (job.peer_ip, job.peer_port)
                if ch is None or ch.closed:
                    ch = self.dial.connect(*at)
                try:
                    transfer.download(job, ch, self.save)
                finally:
                    self.dial.give_back(*at, ch)  # back at rest (IDLE): the next job's, else closed
                break
            except Lost as e:
                self._lost(job, f"results are gone from {job.peer_name}: {e}")
                return
            except (TimeoutError, ConnectionClosed, OSError) as e:
                tries += 1
                if not self._peer_alive(job):
                    self._lost(job, f"{job.peer_name} went away before the results came home ({e})")
                    return
                if tries > 60:
                    raise HomieError(f"could not fetch results from {job.peer_name}: {e}", EXIT_TRANSFER) from None
                time.sleep(0.5)
        code = job.code
        self._end_attempt(job, "done")
        self._finish(job, JobState.DONE, exit_code=code if code is not None else EXIT_INTERNAL)

    def _finish(self, job: Job, state: str, **fields) -> None:
        _clear(job.dir / ".incoming")  # a download cut short leaves nothing behind
        if job.syncer is not None:
            job.syncer.stop()
            job.syncer = None
        fields.setdefault("finished_at", time.time())
        job.update(state=state, **fields)
        job.log.close()  # finished: its descriptor goes back (the daemon keeps every job it sent)
        self.save(job)
        self.log.info("job.finished", job_id=job.id, state=state, exit_code=job.exit_code, message=job.message)

    def signal(self, job: Job, sig: int) -> str:
        """Deliver a signal to a submitted job wherever it is."""
        if job.state == JobState.QUEUED:
            self._finish(job, JobState.KILLED, message="killed while queued", exit_code=128 + sig)
            return "killed while queued"
        if job.terminal:
            return f"job {job.id} already ended ({job.state})"
        if job.state == JobState.FETCHING:
            return f"job {job.id} already exited; its results are being fetched"
        ch = self.dial.connect(job.peer_ip, job.peer_port)
        try:
            ch.send("signal", job_id=job.wire_id, sig=int(sig), **_auth(job))
            reply = ch.recv_msg("ok", "error", timeout=10)
        finally:
            ch.close()
        if reply.t == "error":
            raise HomieError(f"{job.peer_name}: {reply['message']}")
        if sig == signal.SIGINT:
            job.update(interrupts=(job.interrupts or 0) + 1)
        if sig == signal.SIGKILL:
            # The worker stops a job with SIGTERM first, SIGKILL for what is left 2 s later.
            return f"stopping job {job.id} on {job.peer_name} (SIGTERM, then SIGKILL after 2 s)"
        return f"sent {signal.Signals(sig).name} to job {job.id} on {job.peer_name}"


def _clear(path) -> None:
    shutil.rmtree(path, ignore_errors=True)
