"""The worker's session: what each request on a job channel means (submit,
attach, fetch, ack, signal, ckpt_fetch), for one authenticated connection
at a time. A job outlives the connection that submitted it."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import time
from typing import TYPE_CHECKING

from homie import checkpoints, files
from homie.errors import HomieError, ManifestError, ProtocolError
from homie.files import engine
from homie.joblog import JobLog
from homie.wire.channel import Channel, ConnectionClosed
from homie.wire.protocol import Message
from homie.worker import jobdir
from homie.worker.job import WorkerJob
from homie.worker.runner import Outcome

if TYPE_CHECKING:
    from homie.worker.startd import Worker

JOB_ID_RE = re.compile(r"^[a-z0-9]{4,32}$")
IDLE_TIMEOUT = 60.0  # a connection with no request for this long is cut
FRAME_TIMEOUT = 30.0  # mid-transfer: the next frame must come within this
PING_EVERY = 2.0  # keepalive while a job is quiet, so a dead link is noticed


class Session:
    def __init__(self, worker: Worker):
        self.w = worker

    def serve(self, ch: Channel, peer: str, ip: str) -> None:
        while True:
            msg = ch.recv_msg(timeout=IDLE_TIMEOUT)
            if msg.t == "bye":
                return
            handler = getattr(self, f"_on_{msg.t}")
            handler(ch, msg, peer, ip)

    def _job(self, ch: Channel, msg: Message, peer: str) -> WorkerJob | None:
        """The job, if it exists and the request is its submitter's: one member's
        output and results are not another's to read, signal, take away or
        collect. The name in a certificate is any member's to choose, so a job
        submitted with a token (a random secret only its submitter holds)
        answers only to that token."""
        job_id = msg["job_id"]
        with self.w.lock:
            job = self.w.jobs.get(job_id)
        if job is None:
            ch.send("error", message=f"no job {job_id} on {self.w.me.name} (finished and collected, expired,"
                                     " or lost in a restart of the worker)", code="unknown_job")
            return None
        if not job.answers_to(peer, msg.get("token")):
            ch.send("error", message=f"job {job_id} on {self.w.me.name} is {job.submitter}'s", code="forbidden")
            return None
        return job

    def _on_submit(self, ch: Channel, msg: Message, peer: str, ip: str) -> None:
        job_id = msg["job_id"]
        refusal = self._refusal(msg)
        if refusal:
            ch.send("refuse", reason=refusal[1], code=refusal[0])
            return
        try:
            entries = files.validate_manifest(msg["files"])
            if msg["script"] not in {e.path for e in entries}:
                raise ManifestError(f"the script {msg['script']!r} is not among the job's files")
            args = msg["args"]
            if not all(isinstance(a, str) for a in args):
                raise ProtocolError("submit: args must be strings")
            _check_job_options(msg, {e.path for e in entries})
            checkpoints.normalize(msg.get("checkpoints"))
        except HomieError as e:
            ch.send("error", message=str(e), code="bad_job")
            return
        # A job id is one job on this worker: while one is uploading, running or
        # holding results, a second submit with its id is refused.
        with self.w.lock:
            taken = job_id in self.w.jobs
        if taken or self.w.book.has(job_id) or not JOB_ID_RE.match(job_id):
            ch.send("error", message=f"bad or duplicate job id {job_id!r}", code="bad_job")
            return
        # The slot is taken now, not when the upload is done: two submitters
        # asking at the same moment must not both get the last one.
        admission = self.w.book.admit(job_id, peer, self.w.karma_of_peers())
        self.w.log.debug("slot.admission", job_id=job_id, submitter=peer, granted=admission.granted,
                        reason=admission.reason)
        if not admission.granted:
            extra = {"retry_after": round(admission.retry_after, 3)} if admission.retry_after else {}
            ch.send("refuse", reason=admission.reason, code=admission.code, **extra)
            return
        try:
            self._accept(ch, msg, entries, peer, ip)
        finally:
            with self.w.lock:
                held = job_id in self.w.jobs
            if not held:
                self.w.book.release(job_id)  # the upload failed or was refused

    def _accept(self, ch: Channel, msg: Message, entries: list, peer: str, ip: str) -> None:
        sizes = {e.sha256: e.size for e in entries}
        shas = sorted(sizes)
        job = None
        try:
            # Pinned before "have it" is decided: an eviction in between would lose it.
            with self.w.blobs.pinned(shas):
                need = [s for s in shas if not self._have(s, sizes[s])]
                ch.send("need", hashes=need)
                try:
                    self._receive_blobs(ch, set(need), sizes)
                except OSError as e:
                    ch.send("error", message=f"{self.w.me.name} cannot store the upload: {e.strerror or e}",
                            code="disk")
                    self._discard_rest(ch)
                    return
                except ManifestError as e:
                    ch.send("error", message=str(e), code="bad_upload")
                    self._discard_rest(ch)
                    return
                job = self._materialize(ch, msg, entries, peer, ip)
        finally:
            if job is None:
                # No job evicts for this upload: what it stored must not leave the cache over
                # its cap (a submitter failing upload after upload would fill the disk).
                self.w.blobs.evict()
        if job is None:
            return
        self._stream(ch, job, 0)

    @staticmethod
    def _discard_rest(ch: Channel, seconds: float = 5.0) -> None:
        """After refusing an upload, read and drop what is still in flight until
        the submitter hangs up: closing with unread data would reset the
        connection and could destroy the error message before it is read."""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                ch.recv(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            pass
        raise ConnectionClosed("upload refused")

    def _refusal(self, msg: Message) -> tuple[str, str] | None:
        """Why this worker will not take the job whatever its slots (or is in use by its owner)."""
        if self.w.paused:
            return ("paused", f"{self.w.me.name} is paused by its owner")
        if self.w.config.accept_jobs == "idle" and self.w.cpu_idle() < self.w.config.idle_threshold:
            return ("busy", f"{self.w.me.name} is in use by its owner")
        if msg.get("gpu"):
            if not self.w.config.allow_gpu:
                return ("gpu", f"{self.w.me.name} does not lend its GPU")
            if not self.w.resources().get("gpus"):
                return ("gpu", f"{self.w.me.name} has no GPU")
        ex = msg.get("executor") or "auto"
        if ex != "auto" and ex not in self.w.executors:
            return ("executor", f"{self.w.me.name} has no executor {ex!r} (has: {', '.join(self.w.executor_names())})")
        return None

    def _have(self, sha: str, size: int) -> bool:
        """A cached blob of this content and size. A size that disagrees is asked for
        again, and the cached copy is left alone: the submitter may be lying (its
        upload then fails the hash check), and another job may be built from it
        right now; a verified upload replaces a copy that really is torn
        (BlobCache._commit)."""
        if not self.w.blobs.has(sha):
            return False
        try:
            return os.stat(self.w.blobs.path(sha)).st_size == size
        except OSError:
            return False

    def _receive_blobs(self, ch: Channel, need: set, sizes: dict) -> None:
        with engine.Receiver(ch, timeout=FRAME_TIMEOUT) as rx:
            while True:
                msg = ch.recv_msg("blob", "upload_done", timeout=FRAME_TIMEOUT)
                if msg.t == "upload_done":
                    if need:
                        raise ManifestError(f"upload ended with {len(need)} file(s) missing")
                    return
                sha, size = msg["sha256"], msg["size"]
                if sha not in need or sizes.get(sha) != size:
                    raise ManifestError("upload of a file that was not asked for")
                # The engine hashes every byte on its own thread; the writer checks
                # that digest before the blob gets its name in the cache.
                try:
                    rx.receive(size, sha, self.w.blobs.writer(sha, size, hashed_by_caller=True), what="file upload")
                except engine.Corrupted:
                    raise ManifestError(f"blob {sha[:12]}: content does not match its hash") from None
                except engine.TransferError as e:
                    raise ManifestError(str(e)) from None
                need.discard(sha)

    def _materialize(self, ch, msg, entries, peer, ip) -> WorkerJob | None:
        job_id = msg["job_id"]
        try:
            ident = self.w.identities.acquire(job_id)
        except HomieError as e:
            ch.send("error", message=f"{self.w.me.name} cannot run the job: {e}", code="setup")
            return None
        try:
            # Hard links share the blob's inode: safe only when the job's uid is not
            # the blob's owner (a job running as the daemon's user could chmod and
            # rewrite a cached input in place for the next job).
            jd = self.w.work.build(job_id, entries, self.w.blobs, ident, link=ident.differs,
                                 sandboxed=self.w.sandbox.active, mkdirs=(checkpoints.DEFAULT_DIR,))
            self.w.blobs.evict(keep={e.sha256 for e in entries})
            log = JobLog(self.w.logs / f"{job_id}.log")
        except (OSError, HomieError) as e:
            self.w.identities.release(job_id)
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            # The submitter hears the reason; the owner's log also names the path.
            self.w.log.warning("job.prepare_failed", job_id=job_id, error=repr(e))
            ch.send("error", message=f"{self.w.me.name} cannot prepare the job directory: {why}", code="disk")
            return None
        job = WorkerJob(
            id=job_id, submitter=peer, submitter_ip=ip, script=msg["script"], args=list(msg["args"]),
            files=[e.to_dict() for e in entries], executor=msg.get("executor") or "auto",
            gpu=bool(msg.get("gpu")), dir=jd, log=log, ident=ident, extra_env=dict(msg.get("env") or {}),
            timeout=msg.get("timeout"), stdin=msg.get("stdin"),
            token_sha=hashlib.sha256(msg["token"].encode()).hexdigest() if msg.get("token") else None,
        )
        job.inputs_stat = jobdir.scan(jd)
        job.ckpt = checkpoints.Watcher(jd, checkpoints.normalize(msg.get("checkpoints")),
                                       interval=max(1.0, float(msg.get("checkpoint_interval") or 60.0)),
                                       taker=functools.partial(checkpoints.take, uid=ident.uid,
                                                               inputs=jobdir.inodes(job.inputs_stat)))
        job.ckpt.prime()  # a checkpoint restored from an earlier attempt is not a new one
        with self.w.lock:
            self.w.jobs[job_id] = job
        self.w.book.hold(job_id)  # the job itself holds the slot from here on
        self.w.store.worker_job(job_id, {"state": "preparing", "dir": str(jd), "from": peer,
                                            "uid": ident.uid if self.w.identities.per_job else None})
        self.w.log.info("job.accepted", job_id=job_id, submitter=peer, script=job.script, files=len(entries),
                      uid=ident.uid, sandbox=self.w.sandbox.label)
        threading.Thread(target=self.w.starter.run, args=(job,), name=f"job-{job_id}", daemon=True).start()
        return job

    def _stream(self, ch: Channel, job: WorkerJob, offset: int) -> None:
        started_sent = False
        ckpt_sent = 0
        last = time.monotonic()
        while True:
            if not started_sent and job.start_offset is not None and offset >= job.start_offset:
                ch.send("started", job_id=job.id, pid=job.pid, gpu=job.gpu_index)
                started_sent = True
            snap = job.ckpt.snapshot if job.ckpt is not None and started_sent else None
            if snap is not None and snap.seq > ckpt_sent and not job.done.is_set():
                ch.send("checkpoint", job_id=job.id, seq=snap.seq, at=snap.at, bytes=snap.size)
                ckpt_sent = snap.seq
            until = job.start_offset if not started_sent else None
            recs = job.log.read(offset, 1 << 20, until=until)
            for stream, end, data in recs:
                ch.send_output(stream, end, data)
                offset = end
            if recs:
                last = time.monotonic()
                continue
            if job.log.closed:
                # Dropped (acked) while this stream was behind: nothing more will come.
                ch.send("error", message=f"job {job.id} is gone from {self.w.me.name}", code="unknown_job")
                return
            if job.done.is_set() and offset >= job.log.end:
                o = job.outcome or Outcome()
                ch.send("exit", job_id=job.id, code=o.code, signal=o.signal, reason=o.reason,
                        cpu_s=o.cpu_s, wall_s=o.wall_s, gpu_s=o.wall_s if job.gpu else 0.0,
                        results=len(job.results), evicted=bool(job.evicted_by),
                        checkpoint=job.ckpt.seq if job.ckpt is not None else 0)
                return
            if time.monotonic() - last > PING_EVERY:
                ch.send("ping")
                last = time.monotonic()
            if job.log.finished and offset >= job.log.end:
                job.done.wait(0.5)  # output over; results are being collected
            else:
                job.log.wait(offset, 0.5)

    def _on_attach(self, ch, msg, peer, ip) -> None:
        job = self._job(ch, msg, peer)
        if job is None:
            return
        offset = msg["offset"]
        if offset < 0 or offset > job.log.end:
            ch.send("error", message=f"bad output offset {offset}", code="bad_offset")
            return
        self._stream(ch, job, offset)

    def _on_ckpt_fetch(self, ch, msg, peer, ip) -> None:
        job = self._job(ch, msg, peer)
        if job is None:
            return
        checkpoints.serve(ch, job.id, job.ckpt.snapshot if job.ckpt is not None else None)

    def _on_fetch(self, ch, msg, peer, ip) -> None:
        job = self._job(ch, msg, peer)
        if job is None:
            return
        if not job.done.is_set():
            ch.send("error", message=f"job {job.id} is still running", code="running")
            return
        ch.send("results", job_id=job.id, files=job.results)
        want = ch.recv_msg("want", timeout=FRAME_TIMEOUT)["paths"]
        by_path = {r["path"]: r for r in job.results}
        items = []
        for path in want:
            entry = by_path.get(path) if isinstance(path, str) else None
            if entry is None:
                ch.send("error", message=f"no result file {str(path)[:100]!r}", code="bad_request")
                return
            items.append(engine.Outgoing(size=entry["size"], name=entry["path"],
                                         source=functools.partial(jobdir.open_beneath, job.dir, entry["path"]),
                                         head=("blob", {"sha256": entry["sha256"], "size": entry["size"]})))
        try:
            engine.Sender(ch).send(items)
        except engine.Shrank:
            raise ConnectionClosed("result file shrank while sending") from None
        ch.send("results_done")

    def _on_ack(self, ch, msg, peer, ip) -> None:
        with self.w.lock:
            job = self.w.jobs.get(msg["job_id"])
        if job is not None and not job.answers_to(peer, msg.get("token")):
            ch.send("error", message=f"job {job.id} on {self.w.me.name} is {job.submitter}'s", code="forbidden")
            return
        ch.send("ok")
        if job is not None and job.done.is_set():
            # After the answer: the submitter has its results, and removing the job
            # directory is this machine's business, not something its job waits for.
            self.w.drop(job, "delivered")

    def _on_signal(self, ch, msg, peer, ip) -> None:
        with self.w.lock:
            job = self.w.jobs.get(msg["job_id"])
        if job is None:
            ch.send("error", message=f"no job {msg['job_id']} on {self.w.me.name}", code="unknown_job")
            return
        if not job.answers_to(peer, msg.get("token")):
            ch.send("error", message=f"only {job.submitter} (who submitted it) or {self.w.me.name}'s owner may"
                                     f" signal job {job.id}", code="forbidden")
            return
        self.w.signal_job(job, msg["sig"], by=peer)
        ch.send("ok")


def _check_job_options(msg: Message, paths: set) -> None:
    """The submit message's optional env, timeout and stdin: typed and sane, or a bad_job error."""
    env = msg.get("env") or {}
    if not isinstance(env, dict) or len(env) > 256:
        raise ProtocolError("submit: env must be a mapping of at most 256 variables")
    for k, v in env.items():
        if not (isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
                and len(k) + len(v) < 65536):
            raise ProtocolError(f"submit: bad environment variable {str(k)[:40]!r}")
    timeout = msg.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ProtocolError("submit: timeout must be a positive number of seconds")
    stdin = msg.get("stdin")
    if stdin is not None and (not isinstance(stdin, str) or stdin not in paths):
        raise ManifestError("submit: stdin must name one of the job's files")
    token = msg.get("token")
    if token is not None and not (isinstance(token, str) and 16 <= len(token) <= 128):
        raise ProtocolError("submit: token must be 16 to 128 characters")
