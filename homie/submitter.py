"""The submitting side: this daemon owns every job it sends out.

It queues the job, picks the peer, uploads only what the peer lacks, mirrors
the output into a local log (which `homie run`, `attach` and `logs` follow),
reconnects after a dropped link and resumes from the last offset, fetches the
results into the home and records everything in the store. A closed terminal
or a restart of this daemon loses nothing.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

from homie import PROTOCOL_VERSION, __version__, checkpoints, files, migration, protocol, scheduling
from homie.channel import Channel, ConnectionClosed
from homie.errors import (EXIT_INTERNAL, EXIT_NO_PEER, EXIT_PEER_LOST, EXIT_TRANSFER, EXIT_USAGE,
                          HomieError, ManifestError, ProtocolError)
from homie.joblog import JobLog
from homie.protocol import Conversation, Data, Message, Output
from homie.trust import SERVER_HOSTNAME

CONNECT_TIMEOUT = 5.0
STREAM_TIMEOUT = 8.0  # the worker pings every 2 s; silence this long means the link is down
STREAM_QUIET = 3.0  # silence after which a peer without heartbeats counts as gone
CHUNK = 1 << 20
STDIN_NAME = ".homie-stdin"  # the manifest entry holding what `homie run` read from its stdin
TERMINAL = ("done", "failed", "lost", "killed")


def new_job_id() -> str:
    return secrets.token_hex(4)


def _auth(job) -> dict:
    """The job's token for the worker, where it has one (jobs queued before tokens have none)."""
    return {"token": job.token} if job.token else {}


class Job:
    """A job this node submitted. `doc` is what the store keeps."""

    FIELDS = (
        "id", "created", "state", "script", "script_path", "args", "cwd", "files", "directory", "peer",
        "gpu", "executor", "scheduler", "tag", "peer_name", "peer_ip", "peer_port", "peer_instance",
        "remote_offset", "code", "signal", "reason", "exit_code", "message", "results", "started_at",
        "finished_at", "waiting", "why", "cpu_s", "wall_s", "gpu_s", "attempts", "collected", "interrupts",
        "upload_files", "upload_bytes", "sent_bytes", "via", "retries", "lost_peers", "dispatched_at", "refusals",
        "first_dispatched_at", "log_end", "env", "timeout", "name", "stdin", "token",
        # checkpoints and attempts (homie.migration)
        "checkpoints", "attempt", "losses", "evictions", "evicted", "ckpt_seq", "ckpt_at", "ckpt_attempt",
        "ckpt_bytes", "restored_at", "history", "stale",
    )

    def __init__(self, doc: dict, outbox: Path):
        self.doc = {k: doc.get(k) for k in self.FIELDS}
        self.dir = outbox / self.doc["id"]
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log = JobLog(self.dir / "output.log")
        if self.doc["state"] in TERMINAL:
            self.log.finish()
        self.cond = threading.Condition()
        self.progress: dict | None = None
        self.manifest: list[files.FileEntry] | None = None
        self.sources: dict[str, Path] = {}
        self.thread: threading.Thread | None = None
        self.channel: Channel | None = None
        self.ckpt_store = checkpoints.Store(self.dir / "checkpoint")
        self.ckpt_lock = threading.Lock()
        self.syncer: migration.Syncer | None = None

    def __getattr__(self, name):
        doc = self.__dict__.get("doc")
        if doc is not None and name in doc:
            return doc[name]
        raise AttributeError(name)

    @property
    def wire_id(self) -> str:
        return migration.wire_id(self.doc["id"], self.doc["attempt"])

    @property
    def checkpointed(self) -> bool:
        return bool(self.doc["checkpoints"] or self.doc["ckpt_seq"])

    @property
    def results_dir(self) -> Path:
        return self.dir / "results"

    def update(self, **fields) -> None:
        with self.cond:
            self.doc.update(fields)
            self.cond.notify_all()

    @property
    def terminal(self) -> bool:
        return self.doc["state"] in TERMINAL

    def summary(self) -> dict:
        d = self.doc
        return {
            "job_id": d["id"], "peer": d["peer_name"], "script": d["script"], "args": d["args"],
            "status": d["state"], "created": d["created"], "exit_code": d["exit_code"], "why": d["why"],
            "reason": d["reason"], "tag": d["tag"], "name": d["name"], "results": len(d["results"] or []),
            "dispatched_at": d["dispatched_at"], "first_dispatched_at": d["first_dispatched_at"], "started_at": d["started_at"], "finished_at": d["finished_at"],
            "attempt": d["attempt"] or 1, "attempts": list(d["history"] or []), "checkpoint_at": d["ckpt_at"],
            "checkpoint_seq": d["ckpt_seq"], "stale": len(d["stale"] or []),
        }


class Submitter:
    def __init__(self, node):
        self.node = node
        self.config = node.config
        self.log = node.log
        self.store = node.store
        self.outbox = Path(node.home.outbox)
        self.hashes = files.HashCache(Path(node.home.root) / "cache" / "hashes.db")
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.wake = threading.Condition()
        # peer instance -> ids of jobs sent there whose start its heartbeats may not show yet
        self.pending: dict[str, set] = {}
        self.refused: dict[str, float] = {}  # peer instance -> until when not to retry it
        self._reaper = migration.Reaper(self.connect, self._online, self.log)

    # -- creation ------------------------------------------------------------
    def submit(self, req: dict) -> Job:
        """Validate a `run` request from the CLI and queue it."""
        cwd = Path(req["cwd"])
        script = Path(req["script"])
        script_path = script if script.is_absolute() else cwd / script
        directory = req.get("directory")
        if directory is not None:
            directory = Path(directory) if Path(directory).is_absolute() else cwd / directory
            if not directory.is_dir():
                raise HomieError(f"not a directory: {req['directory']}", EXIT_USAGE)
        if not script_path.is_file():
            raise HomieError(f"script not found: {req['script']}", EXIT_USAGE)
        args = req.get("args") or []
        if not all(isinstance(a, str) for a in args):
            raise HomieError("arguments must be strings", EXIT_USAGE)
        pin = req.get("peer")
        try:
            ckpt_paths = checkpoints.normalize(req.get("checkpoints"))[1:]
        except ManifestError as e:
            raise HomieError(str(e), EXIT_USAGE) from None
        self.check_peer(pin)
        self.check_plugins(req)
        job_id = new_job_id()
        doc = {
            "id": job_id, "created": time.time(), "state": "queued", "script_path": str(script_path.resolve()),
            "args": list(args), "cwd": str(cwd),
            # -f paths and globs are the user's, relative to where they typed the command
            "files": [f if os.path.isabs(f) else str(cwd / f) for f in (req.get("files") or [])],
            "directory": str(directory.resolve()) if directory else None, "peer": pin,
            "gpu": bool(req.get("gpu")), "executor": req.get("executor") or self.config.executor,
            "scheduler": req.get("scheduler") or self.config.scheduler, "tag": req.get("tag"),
            # None: the default, decided when a peer is lost (migration.retry_budget)
            "retries": max(0, int(req["retries"])) if req.get("retries") is not None else None,
            "checkpoints": ckpt_paths, "attempt": 1, "losses": 0, "history": [], "stale": [],
            "remote_offset": 0, "results": [], "interrupts": 0,
            "env": dict(req.get("env") or {}) or None, "timeout": req.get("timeout"), "name": req.get("name"),
        }
        job = Job(doc, self.outbox)
        try:
            if req.get("stdin_file"):
                self._take_stdin(job, Path(req["stdin_file"]))
            self._collect(job)  # errors in the inputs are reported now, not after queueing
        except BaseException:
            _clear(job.dir)
            raise
        with self.lock:
            # Queue order is the order jobs become visible to the dispatcher,
            # not when their request arrived (hashing inputs takes a while).
            job.doc["created"] = time.time()
            self.jobs[job_id] = job
        self._save(job)
        self.log.info("job.submitted", job_id=job_id, script=job.script, files=len(job.manifest))
        self.kick()
        return job

    def check_peer(self, pin: str | None) -> None:
        if pin and pin != self.node.name and not self.node.peers.by_name(pin):
            online = ", ".join(sorted({p.name for p in self.node.peers.snapshot()} | {self.node.name}))
            raise HomieError(f"unknown peer {pin!r} (online: {online})", EXIT_NO_PEER)

    @staticmethod
    def check_plugins(req: dict) -> None:
        """A scheduler or executor no plugin provides is a mistake to report now,
        not a job that silently falls back or waits for a peer that cannot exist."""
        from homie import checks

        for why in (req.get("scheduler") and checks.check_scheduler(req["scheduler"]),
                    req.get("executor") and checks.check_executor(req["executor"])):
            if why:
                raise HomieError(why, EXIT_USAGE)

    def _take_stdin(self, job: Job, path: Path) -> None:
        """The bytes the CLI read from its stdin become part of the job's inputs
        (sent as STDIN_NAME); the file moves into the job's own directory, so
        a restart of this daemon or `homie restart` still has it."""
        stdin_dir = (Path(self.node.home.root) / "stdin").resolve()
        src = path.resolve()
        if src.parent != stdin_dir or not src.is_file():
            raise HomieError("stdin must come from the homie CLI", EXIT_USAGE)
        os.replace(src, job.dir / "stdin")
        job.doc["stdin"] = STDIN_NAME

    def _collect(self, job: Job) -> None:
        script_path = Path(job.script_path)
        directory = Path(job.directory) if job.directory else None
        base = directory or script_path.parent
        try:
            collected = files.collect([str(script_path), *job.files], directory=directory, base=base)
        except HomieError as e:
            raise HomieError(str(e), EXIT_USAGE) from None
        entries = []
        sources = {}
        script_rel = None
        for rel, path in collected.files:
            size, sha = self.hashes.sha256_of(path)
            mode = 0o755 if os.stat(path).st_mode & 0o100 else 0o644
            entries.append(files.FileEntry(rel, mode, size, sha))
            sources[sha] = path
            if Path(path).resolve() == script_path.resolve():
                script_rel = rel
        if script_rel is None:
            raise HomieError(f"the script {script_path} is excluded by an ignore rule", EXIT_USAGE)
        if job.stdin:
            if any(e.path == STDIN_NAME for e in entries):
                raise HomieError(f"a file named {STDIN_NAME} is among the inputs: that name is homie's"
                                 " (the job's stdin); rename it", EXIT_USAGE)
            path = job.dir / "stdin"
            size, sha = self.hashes.sha256_of(path)
            entries.append(files.FileEntry(STDIN_NAME, 0o644, size, sha))
            sources[sha] = path
        # A new attempt starts from the last complete checkpoint: its files win over inputs of the same name.
        restored = job.ckpt_store.entries()
        if restored:
            taken = {e.path for e, _ in restored}
            if script_rel in taken:
                raise HomieError(f"the checkpoint holds the script {script_rel}: checkpoint paths must not"
                                 " include the job's inputs", EXIT_USAGE)
            entries = [e for e in entries if e.path not in taken]
            for e, src in restored:
                entries.append(e)
                sources[e.sha256] = src
        job.manifest = entries
        job.sources = sources
        job.doc["script"] = script_rel
        job.doc["upload_files"] = len(entries)
        job.doc["upload_bytes"] = sum(e.size for e in entries)
        for w in collected.warnings:
            job.log.append(protocol.STDERR, f"homie: {w}\n".encode())

    def _save(self, job: Job) -> None:
        self.store.save_job(job.doc)

    # -- lookup ------------------------------------------------------------------
    def find(self, prefix: str) -> list[Job]:
        with self.lock:
            exact = self.jobs.get(prefix)
            if exact:
                return [exact]
            return [j for j in self.jobs.values() if j.id.startswith(prefix)]

    def restore(self) -> None:
        """Pick up where the last run of this daemon left off."""
        for doc in self.store.jobs():
            job = Job(doc, self.outbox)
            with self.lock:
                self.jobs[job.id] = job
            if not job.terminal:
                job.ckpt_store.cleanup()  # a fetch cut short by the restart
                if job.attempt is None:
                    job.doc.update(attempt=1, losses=0, history=[], stale=[])
            if job.state == "uploading":
                job.doc["state"] = "queued"  # the upload never completed: start it again
            if job.state == "queued":
                try:
                    self._collect(job)
                except HomieError as e:
                    self._finish(job, "failed", message=str(e), exit_code=EXIT_USAGE)
                    continue
            if job.state == "running" and job.log_end is not None and job.log.end > job.log_end:
                # output mirrored after the last save comes again from the saved remote offset
                job.log.truncate(job.log_end)
            if job.state in ("running", "fetching"):
                self._start_driver(job)
        self.kick()

    # -- the queue -------------------------------------------------------------------
    def kick(self) -> None:
        with self.wake:
            self.wake.notify_all()

    def dispatch_loop(self, stop: threading.Event) -> None:
        """Assign queued jobs to peers in submission order."""
        while not stop.is_set():
            try:
                self._dispatch_once()
            except Exception:
                self.log.exception("dispatch.failed")
            try:
                self.reap_stale()
            except Exception:
                self.log.exception("dispatch.reap_failed")
            with self.wake:
                self.wake.wait(0.5)

    def _candidates(self) -> list:
        """Online peers with the free slots we can count on: a heartbeat may
        not show yet the jobs we just sent, but our own records do."""
        now = time.time()
        ours: dict[str, int] = {}
        with self.lock:
            for j in self.jobs.values():
                if j.state in ("uploading", "running") and j.peer_instance:
                    ours[j.peer_instance] = ours.get(j.peer_instance, 0) + 1
        out = []
        for p in [self.node.local_peer(), *self.node.peers.snapshot()]:
            if self.refused.get(p.instance, 0) > now:
                p.slots_free = 0
            elif p.slots_free is not None:
                pend = len(self.pending.get(p.instance, ()))
                free = p.slots_free - pend
                if p.max_jobs is not None:
                    free = min(free, p.max_jobs - ours.get(p.instance, 0))
                p.slots_free = max(0, free)
            out.append(p)
        return out

    def _dispatch_once(self) -> None:
        with self.lock:
            queued = sorted((j for j in self.jobs.values() if j.state == "queued"), key=lambda j: j.created)
        if not queued:
            return
        candidates = self._candidates()
        for job in queued:
            refused = set(job.refusals or {})
            lost = set(job.lost_peers or [])
            req = scheduling.JobRequest(job_id=job.id, script=job.script, submitter=self.node.name, gpu=job.gpu,
                                        peer=job.peer, scheduler=job.scheduler or "auto",
                                        executor=job.executor or "auto", queued_at=job.created)
            cands = [p for p in candidates if p.instance not in refused | lost]
            peer, verdicts = scheduling.choose(req, cands, self.config)
            if peer is None and lost and job.checkpointed:
                # Nobody else can take it: the peer it was lost on, now that it is back.
                cands = [p for p in candidates if p.instance not in refused]
                peer, verdicts = scheduling.choose(req, cands, self.config)
            if peer is None:
                permanent = self._permanent(req, verdicts)
                if permanent and job.refusals:
                    permanent += "; refused by " + "; ".join(job.refusals.values())
                if permanent and not self._settling():
                    self._finish(job, "failed", message=permanent, exit_code=EXIT_NO_PEER)
                else:
                    why = scheduling.why_waiting(verdicts, req)
                    if job.why != why:
                        job.update(why=why)
                        self._save(job)
                continue
            if peer.slots_free is not None:
                peer.slots_free -= 1
            self.pending.setdefault(peer.instance, set()).add(job.id)
            job.update(state="uploading", why=None, peer_name=peer.name, peer_ip=peer.ip, peer_port=peer.port,
                       peer_instance=peer.instance, attempts=(job.attempts or 0) + 1,
                       # A secret only we hold, new for every attempt: the worker lets only it
                       # attach, fetch, ack or signal the job (the name in a member's certificate
                       # is any member's to choose, and an earlier worker has seen the old one).
                       token=secrets.token_hex(16),
                       via="chosen" if job.peer else "best available", dispatched_at=time.time(),
                       first_dispatched_at=job.first_dispatched_at or time.time(), evicted=None)
            self._save(job)
            self._start_driver(job)

    def _permanent(self, req, verdicts) -> str | None:
        """Why no peer can ever take this job, or None if it should wait."""
        temporary = ("busy", "paused", "in use")
        if not verdicts:
            if req.peer:
                return f"peer {req.peer!r} is not online"
            return "no peer can take this job"
        if any(any(r.startswith(temporary) for r in reasons) for _, reasons in verdicts):
            return None
        detail = "; ".join(f"{p.name}: {', '.join(r)}" for p, r in verdicts)
        return f"no peer can take this job ({detail})"

    def _start_driver(self, job: Job) -> None:
        job.thread = threading.Thread(target=self._drive, args=(job,), name=f"submit-{job.id}", daemon=True)
        job.thread.start()

    # -- driving one job -------------------------------------------------------------
    def _drive(self, job: Job) -> None:
        try:
            if job.state == "uploading":
                self._send(job)
            if job.state == "running":
                self._follow(job)
            if job.state == "fetching":
                self._fetch(job)
        except HomieError as e:
            self._finish(job, "failed", message=str(e), exit_code=e.exit_code)
        except Exception as e:
            self.log.exception("job.driver_crashed", job_id=job.id)
            self._finish(job, "failed", message=f"internal error: {type(e).__name__}: {e}", exit_code=EXIT_INTERNAL)
        finally:
            self._unpend(job)
            self.kick()

    def _unpend(self, job: Job) -> None:
        """The job no longer holds a slot we reserved on its peer."""
        for ids in self.pending.values():
            ids.discard(job.id)

    def connect(self, ip: str, port: int) -> Channel:
        try:
            raw = socket.create_connection((ip, port), timeout=CONNECT_TIMEOUT)
        except OSError as e:
            raise ConnectionClosed(f"cannot connect to {ip}:{port}: {e.strerror or e}") from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.node.trust.client_context().wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
        except ssl.SSLError as e:
            raw.close()
            if isinstance(e, ssl.SSLCertVerificationError) or (e.reason or "") in _KEY_REFUSALS:
                raise HomieError(f"{ip}:{port} refused our group key (TLS: {e.reason or e})",
                                 EXIT_PEER_LOST) from None
            # EOF or a reset mid-handshake is the link (or the 2 s handshake deadline on a
            # lossy link), not the key: the caller tries again.
            raise ConnectionClosed(f"TLS handshake with {ip}:{port} failed: {e.reason or e}") from None
        except OSError as e:
            raw.close()
            raise ConnectionClosed(f"TLS handshake with {ip}:{port} failed: {e}") from None
        ch = Channel(tls, Conversation(protocol.CLIENT))
        try:
            hello = ch.recv_msg("hello", "error", timeout=CONNECT_TIMEOUT)
        except socket.timeout:
            ch.close()
            raise ConnectionClosed(f"{ip}:{port} did not greet us") from None
        if hello.t == "error":
            ch.close()
            raise HomieError(f"{ip}:{port}: {hello['message']}", EXIT_PEER_LOST)
        if hello["proto"] != PROTOCOL_VERSION:
            ch.close()
            raise HomieError(
                f"{hello['name']} runs homie {hello['homie']} (protocol {hello['proto']}, Python {hello['python']});"
                f" this machine runs homie {__version__} (protocol {PROTOCOL_VERSION}): upgrade the older one",
                EXIT_PEER_LOST)
        return ch

    def _send(self, job: Job) -> None:
        if job.manifest is None:
            self._collect(job)
        try:
            ch = self.connect(job.peer_ip, job.peer_port)
        except ConnectionClosed as e:
            self._requeue(job, f"could not reach {job.peer_name}: {e}")
            return
        job.channel = ch
        try:
            ch.send("submit", job_id=job.wire_id, script=job.script, args=job.args,
                    files=[e.to_dict() for e in job.manifest], submitter=self.node.name,
                    executor=job.executor or "auto", gpu=bool(job.gpu), **self._job_settings(job), **_auth(job))
            reply = ch.recv_msg("need", "refuse", "error", timeout=30)
            if reply.t == "refuse":
                if reply["code"] in ("busy", "paused"):
                    # Short: the worker may be holding its next slot for us after a karma decision.
                    self.refused[job.peer_instance] = time.time() + 0.3
                else:
                    # It will never take this job (no GPU, no such executor...): ask others.
                    job.update(refusals={**(job.refusals or {}), job.peer_instance: f"{job.peer_name}: {reply['reason']}"})
                self._requeue(job, reply["reason"])
                ch.close()
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
            job.update(state="running", remote_offset=0, log_end=job.log.end)
            self._save(job)
            self._stream(job, ch)
        except (ConnectionClosed, socket.timeout, OSError) as e:
            ch.close()
            if job.state == "uploading":
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
        out = {"checkpoint_interval": float(self.config.checkpoint_interval)}
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

    def request_of(self, job: Job) -> dict:
        """A `run` request that submits this job again (homie restart)."""
        req = {"script": job.script_path, "args": list(job.args or []), "cwd": job.cwd, "files": list(job.files or []),
               "directory": job.directory, "peer": job.peer, "gpu": bool(job.gpu), "executor": job.executor,
               "scheduler": job.scheduler, "tag": job.tag, "env": job.env, "timeout": job.timeout, "name": job.name,
               "checkpoints": list(job.checkpoints or [])}
        if job.retries is not None:
            req["retries"] = job.retries
        if job.stdin and (job.dir / "stdin").is_file():
            import shutil
            import tempfile

            d = Path(self.node.home.root) / "stdin"
            d.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="stdin-", dir=d)
            os.close(fd)
            shutil.copyfile(job.dir / "stdin", tmp)
            req["stdin_file"] = tmp
        return req

    @staticmethod
    def _check_refusal(ch: Channel) -> None:
        """The worker speaks mid-upload only to refuse it (disk full, bad file):
        stop sending at once and say why."""
        import select

        if ch.sock.pending() or select.select([ch.sock], [], [], 0)[0]:
            ev = ch.recv(timeout=5)
            if isinstance(ev, Message) and ev.t == "error":
                raise HomieError(ev["message"], EXIT_TRANSFER)
            raise ProtocolError("unexpected frame from the worker during the upload")

    @staticmethod
    def _last_word(ch: Channel) -> str | None:
        try:
            ch.conv = None
            while True:
                ev = ch.recv(timeout=1.0)
                if isinstance(ev, Message) and ev.t == "error":
                    return ev["message"]
        except Exception:
            return None

    def _retries_left(self, job: Job) -> int:
        return migration.retry_budget(job.retries, job.checkpointed) - (job.losses or 0)

    def _retry_upload(self, job: Job, ch: Channel, why: str) -> bool:
        """A job with retries left (homie map, --retries) goes to another peer after a failed upload."""
        if self._retries_left(job) <= 0:
            return False
        ch.close()
        job.log.append(protocol.STDERR, f"homie: {why}; retrying elsewhere\n".encode())
        job.update(losses=(job.losses or 0) + 1, lost_peers=list(job.lost_peers or []) + [job.peer_instance],
                   log_end=job.log.end)
        self._requeue(job, f"retrying after {why}")
        return True

    def _requeue(self, job: Job, why: str) -> None:
        self._unpend(job)
        job.update(state="queued", why=why, peer_name=None, peer_ip=None, peer_port=None, peer_instance=None,
                   started_at=None)
        self._save(job)
        self.kick()

    def _upload(self, job: Job, ch: Channel, need: list) -> None:
        by_sha = {e.sha256: e for e in job.manifest}
        if not all(isinstance(h, str) and h in by_sha for h in need):
            raise ProtocolError("the peer asked for files that are not in the job")
        total = sum(by_sha[h].size for h in need)
        job.update(sent_bytes=0)
        job.progress = {"phase": "upload", "done": 0, "total": total, "files": len(need)}
        view = memoryview(bytearray(CHUNK))
        # The same watchdog as for output: a peer that vanished mid-upload is
        # noticed after its heartbeats stop, not after the socket's long timeout.
        quiet = {"since": time.monotonic()}
        done = threading.Event()
        threading.Thread(target=self._watch_stream, args=(job, ch, quiet, done), name=f"watch-up-{job.id}",
                         daemon=True).start()
        try:
            self._upload_blobs(job, ch, need, by_sha, view, quiet)
        except (ConnectionClosed, OSError) as e:
            if not self._peer_alive(job):
                raise ConnectionClosed(f"{job.peer_name} went away (no heartbeat for"
                                       f" {self.config.peer_timeout:g} s)") from None
            raise e
        finally:
            done.set()
        ch.send("upload_done")
        job.doc["sent_bytes"] = job.progress["done"]
        job.progress = None

    def _upload_blobs(self, job: Job, ch: Channel, need: list, by_sha: dict, view, quiet: dict) -> None:
        sent = 0
        chunks = 0
        for sha in need:
            entry = by_sha[sha]
            ch.send("blob", sha256=sha, size=entry.size)
            with open(job.sources[sha], "rb") as f:
                left = entry.size
                while left > 0:
                    n = f.readinto(view[: min(CHUNK, left)])
                    if not n:
                        raise HomieError(f"{entry.path} shrank while uploading; run again", EXIT_TRANSFER)
                    ch.send_data(view[:n])
                    quiet["since"] = time.monotonic()
                    left -= n
                    sent += n
                    job.progress["done"] = sent
                    chunks += 1
                    if chunks % 8 == 0:
                        self._check_refusal(ch)

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
                job.doc.update({"log_end": job.log.append(ev.stream, ev.data), "remote_offset": ev.end})
                if time.monotonic() - saved_at > 1.0:
                    self._save(job)
                    saved_at = time.monotonic()
                continue
            if isinstance(ev, Data):
                raise ProtocolError("unexpected data frame")
            if ev.t == "started":
                self._unpend(job)
                job.update(state="running", started_at=job.started_at or time.time())
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
                    job.update(state="fetching", evicted={"seq": ev.get("checkpoint") or 0,
                                                          "why": ev.get("reason") or "evicted"},
                               cpu_s=ev.get("cpu_s", 0.0), wall_s=ev.get("wall_s", 0.0))
                else:
                    job.update(state="fetching", code=code, signal=ev.get("signal"), reason=ev.get("reason"),
                               cpu_s=ev.get("cpu_s", 0.0), wall_s=ev.get("wall_s", 0.0),
                               gpu_s=ev.get("gpu_s", 0.0))
                    job.log.finish()
                self._save(job)
                self.node.karma_record(job.peer_name, given=False, cpu_s=ev.get("cpu_s", 0.0),
                                       wall_s=ev.get("wall_s", 0.0), gpu_s=ev.get("gpu_s", 0.0),
                                       job_id=job.wire_id)
                job.channel = ch  # back in IDLE: the results come over this same connection
                return
            if ev.t == "error":
                if ev.get("code") == "unknown_job":
                    raise _Lost(ev["message"])
                raise HomieError(f"{job.peer_name}: {ev['message']}", EXIT_INTERNAL)

    def _peer_alive(self, job: Job) -> bool:
        if job.peer_instance == self.node.instance_hex:
            return True
        if self.node.peers.get(job.peer_instance) is not None:
            return True
        # Just (re)started: no heartbeat had time to arrive yet. A peer counts as gone
        # only after peer_timeout without one, counted from our own start.
        return time.time() - self.node.started < self.config.peer_timeout

    def _settling(self) -> bool:
        """Right after start the peer table is still filling: no job fails for want of peers yet."""
        grace = min(self.config.peer_timeout, 2 * self.config.heartbeat_interval + 1.0)
        return time.time() - self.node.started < grace

    def _follow(self, job: Job) -> None:
        """(Re)attach to a running job until it exits, surviving dropped links."""
        while job.state == "running":
            if not self._peer_alive(job):
                self._lost(job, f"{job.peer_name} went away (no heartbeat for {self.config.peer_timeout:g} s)")
                return
            try:
                ch = self.connect(job.peer_ip, job.peer_port)
            except ConnectionClosed:
                time.sleep(0.5)
                continue
            try:
                ch.send("attach", job_id=job.wire_id, offset=job.remote_offset or 0, **_auth(job))
                self._stream(job, ch)
            except _Lost as e:
                self._lost(job, f"{job.peer_name} no longer has the job: {e}")
                ch.close()
                return
            except (ConnectionClosed, socket.timeout, OSError):
                ch.close()
                time.sleep(0.2)
            except ProtocolError as e:
                ch.close()
                raise HomieError(f"{job.peer_name} broke the protocol: {e}", EXIT_INTERNAL) from None

    def _lost(self, job: Job, why: str) -> None:
        self.log.warning("job.lost", job_id=job.id, peer=job.peer_name, why=why)
        if self._retries_left(job) > 0:
            # Run it again (from its checkpoint, if it has one) elsewhere, or on the same
            # peer once it is back; the attempt left behind is stopped if it turns up.
            self._next_attempt(job, why, lost=True)
            return
        self._end_attempt(job, "lost", why)
        self._finish(job, "lost", message=why, exit_code=EXIT_PEER_LOST)

    def _end_attempt(self, job: Job, outcome: str, why: str | None = None) -> None:
        """One line in the job's history: where this attempt ran and how it ended."""
        hist = list(job.history or [])
        hist.append({"attempt": job.attempt or 1, "peer": job.peer_name, "started_at": job.started_at,
                     "ended_at": time.time(), "outcome": outcome, "why": why,
                     "checkpoint_at": job.ckpt_at if (job.ckpt_attempt or 0) == (job.attempt or 1) else None})
        job.update(history=hist)

    def _next_attempt(self, job: Job, why: str, lost: bool) -> None:
        if job.syncer is not None:
            job.syncer.stop()
            job.syncer = None
        self._end_attempt(job, "lost" if lost else "evicted", why)
        stale = list(job.stale or [])
        if lost and job.peer_instance:
            stale.append(migration.Stale(job.peer_instance, job.peer_ip, job.peer_port, job.wire_id, job.token,
                                         time.time()).to_dict())
        saved = job.ckpt_store.current()
        where = (f"from the checkpoint of {time.strftime('%H:%M:%S', time.localtime(saved.at))}" if saved
                 else "from the beginning (no checkpoint yet)")
        job.log.append(protocol.STDERR, f"homie: {why}; running it again {where}\n".encode())
        fields = {"attempt": (job.attempt or 1) + 1, "stale": stale, "restored_at": saved.at if saved else None, "remote_offset": 0, "log_end": job.log.end,
                  "code": None, "signal": None, "reason": None, "evicted": None}
        if lost:
            fields.update(losses=(job.losses or 0) + 1, lost_peers=list(job.lost_peers or []) + [job.peer_instance])
        else:
            fields.update(evictions=(job.evictions or 0) + 1)
        job.update(**fields)
        job.manifest = None  # inputs again, with the checkpoint on top
        job.log.reopen()
        self._requeue(job, f"running it again after {why}")

    def _fetch(self, job: Job) -> None:
        if job.evicted:
            self._fetch_evicted(job)
            return
        tries = 0
        while True:
            try:
                ch, job.channel = job.channel, None
                if ch is None or ch.closed:
                    ch = self.connect(job.peer_ip, job.peer_port)
                try:
                    self._download(job, ch)
                finally:
                    ch.close()
                break
            except _Lost as e:
                self._lost(job, f"results are gone from {job.peer_name}: {e}")
                return
            except (ConnectionClosed, socket.timeout, OSError) as e:
                tries += 1
                if not self._peer_alive(job):
                    self._lost(job, f"{job.peer_name} went away before the results came home ({e})")
                    return
                if tries > 60:
                    raise HomieError(f"could not fetch results from {job.peer_name}: {e}", EXIT_TRANSFER) from None
                time.sleep(0.5)
        code = job.code
        self._end_attempt(job, "done")
        self._finish(job, "done", exit_code=code if code is not None else EXIT_INTERNAL)

    def _fetch_evicted(self, job: Job) -> None:
        """An evicted attempt: bring its last checkpoint home, let the worker drop
        it, and run the job on (evictions are not the job's fault: no retry is spent)."""
        ev = job.evicted or {}
        why = f"{job.peer_name} {ev.get('why') or 'evicted it'}"
        for tries in range(60):
            try:
                ch, job.channel = job.channel, None
                if ch is None or ch.closed:
                    ch = self.connect(job.peer_ip, job.peer_port)
                try:
                    if ev.get("seq", 0) > self._have_seq(job):
                        migration.fetch_now(job, self.connect, lambda saved: self._committed(job, saved), ch=ch)
                    ch.send("ack", job_id=job.wire_id, **_auth(job))
                    ch.recv_msg("ok", "error", timeout=10)
                    ch.send("bye")
                finally:
                    ch.close()
                break
            except (ConnectionClosed, socket.timeout, OSError, HomieError, ProtocolError) as e:
                if not self._peer_alive(job) or tries == 59:
                    why += f" (its last checkpoint could not be fetched: {e})"
                    break
                time.sleep(0.5)
        if (job.evictions or 0) >= migration.MAX_EVICTIONS:
            self._end_attempt(job, "evicted", why)
            self._finish(job, "lost", message=f"{why}; evicted {job.evictions} times, giving up",
                         exit_code=EXIT_PEER_LOST)
            return
        self._next_attempt(job, why, lost=False)

    @staticmethod
    def _have_seq(job: Job) -> int:
        return (job.ckpt_seq or 0) if (job.ckpt_attempt or 0) == (job.attempt or 1) else 0

    def _syncer(self, job: Job) -> migration.Syncer:
        if job.syncer is None:
            job.syncer = migration.Syncer(job, self.connect, lambda saved: self._committed(job, saved), self.log)
        return job.syncer

    def _committed(self, job: Job, saved: checkpoints.Saved) -> None:
        job.update(ckpt_seq=saved.seq, ckpt_at=saved.at, ckpt_attempt=saved.attempt, ckpt_bytes=saved.size)
        self._save(job)
        self.log.info("job.checkpoint", job_id=job.id, attempt=saved.attempt, seq=saved.seq, bytes=saved.size)

    def reap_stale(self) -> None:
        """Attempts given up on whose worker is back: stop them, drop what they made."""
        with self.lock:
            jobs = [j for j in self.jobs.values() if j.stale]
        now = time.time()
        for job in jobs:
            entries = [migration.Stale.from_dict(d) for d in job.stale]
            for st in self._reaper.due([e for e in entries if now - e.since < migration.STALE_TTL]):
                threading.Thread(target=self._reap_one, args=(job, st), name=f"reap-{st.wire_id}",
                                 daemon=True).start()
            if any(now - e.since >= migration.STALE_TTL for e in entries):
                job.update(stale=[d for d in job.stale if now - d["since"] < migration.STALE_TTL])
                self._save(job)

    def _reap_one(self, job: Job, st: migration.Stale) -> None:
        if self._reaper.reap(st):
            job.update(stale=[d for d in (job.stale or []) if d["wire_id"] != st.wire_id])
            self._save(job)

    def _online(self, instance: str) -> bool:
        return instance == self.node.instance_hex or self.node.peers.get(instance) is not None

    def _download(self, job: Job, ch: Channel) -> None:
        ch.send("fetch", job_id=job.wire_id, **_auth(job))
        msg = ch.recv_msg("results", "error", timeout=30)
        if msg.t == "error":
            if msg.get("code") == "unknown_job":
                raise _Lost(msg["message"])
            raise HomieError(f"{job.peer_name}: {msg['message']}", EXIT_TRANSFER)
        try:
            entries = files.validate_manifest(msg["files"])
        except ManifestError as e:
            raise HomieError(f"{job.peer_name} sent an unsafe result list: {e}", EXIT_TRANSFER) from None
        results = job.results_dir
        if results.exists():
            _clear(results)
        staging = job.dir / ".incoming"
        _clear(staging)
        staging.mkdir(mode=0o700)
        ch.send("want", paths=[e.path for e in entries])
        total = sum(e.size for e in entries)
        job.progress = {"phase": "download", "done": 0, "total": total, "files": len(entries)}
        writer = files.SafeWriter(staging)
        import hashlib

        for entry in entries:
            head = ch.recv_msg("blob", "error", timeout=30)
            if head.t == "error":
                raise HomieError(f"{job.peer_name}: {head['message']}", EXIT_TRANSFER)
            if head["sha256"] != entry.sha256 or head["size"] != entry.size:
                raise ProtocolError("result file does not match its manifest")
            h = hashlib.sha256()
            with writer.open_new(entry.path, entry.mode) as f:
                got = 0
                while got < entry.size:
                    ev = ch.recv(timeout=STREAM_TIMEOUT)
                    if not isinstance(ev, Data):
                        raise ProtocolError("result transfer cut short")
                    got += len(ev.data)
                    if got > entry.size:
                        raise ProtocolError("result file longer than announced")
                    h.update(ev.data)
                    f.write(ev.data)
                    job.progress["done"] += len(ev.data)
            if h.hexdigest() != entry.sha256:
                raise HomieError(f"result {entry.path} arrived corrupted (hash mismatch)", EXIT_TRANSFER)
        ch.recv_msg("results_done", timeout=30)
        # Every file arrived whole: only now do they appear under their final names.
        os.rename(staging, results)
        job.progress = None
        job.update(results=[e.path for e in entries])
        self._save(job)
        ch.send("ack", job_id=job.wire_id, **_auth(job))
        ch.recv_msg("ok", "error", timeout=10)
        ch.send("bye")

    def _finish(self, job: Job, state: str, **fields) -> None:
        _clear(job.dir / ".incoming")  # a download cut short leaves nothing behind
        if job.syncer is not None:
            job.syncer.stop()
            job.syncer = None
        fields.setdefault("finished_at", time.time())
        job.update(state=state, **fields)
        job.log.finish()
        self._save(job)
        self.log.info("job.finished", job_id=job.id, state=state, exit_code=job.exit_code, message=job.message)

    # -- control ---------------------------------------------------------------------
    def signal(self, job: Job, sig: int) -> str:
        """Deliver a signal to a submitted job wherever it is."""
        if job.state == "queued":
            self._finish(job, "killed", message="killed while queued", exit_code=128 + sig)
            return "killed while queued"
        if job.terminal:
            return f"job {job.id} already ended ({job.state})"
        if job.state == "fetching":
            return f"job {job.id} already exited; its results are being fetched"
        ch = self.connect(job.peer_ip, job.peer_port)
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

    def save_all(self) -> None:
        """On the way down: every job's remote offset and log end, so the next
        start resumes each output exactly where it stopped."""
        with self.lock:
            jobs = [j for j in self.jobs.values() if not j.terminal]
        for job in jobs:
            self._save(job)

    def forget(self, job: Job) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
        self.store.delete_job(job.id)
        job.log.close()
        _clear(job.dir)


# TLS failures that mean "not our group" rather than "the link broke".
_KEY_REFUSALS = {"CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
                 "SSLV3_ALERT_BAD_CERTIFICATE", "TLSV1_ALERT_DECRYPT_ERROR", "SSLV3_ALERT_CERTIFICATE_UNKNOWN"}


class _Lost(Exception):
    pass


def _clear(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
