"""The worker: the TLS job server that runs jobs for peers.

A connection thread only does I/O for one conversation (homie.channel +
protocol.Conversation); jobs live independently of connections, so a dropped
link or a closed terminal never stops a job: the submitter re-attaches and
resumes output from the log offset where it left off.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from homie import PROTOCOL_VERSION, __version__, checkpoints, execution, files, jobdir, plugins, protocol, sandbox
from homie.admission import ConnectionGate
from homie.cgroup import Cgroups
from homie.channel import Channel, ConnectionClosed, Pipeline
from homie.errors import HomieError, ManifestError, ProtocolError
from homie.identity import Identities, Identity, parse_range
from homie.joblog import JobLog
from homie.owner import SAMPLE_EVERY, OwnerWatch
from homie.peers import balance
from homie.protocol import Conversation, Data, Message
from homie.runner import (JobProcess, Launch, Limits, Outcome, enable_subreaper, processes_of_job,
                          processes_of_uid)

JOB_ID_RE = re.compile(r"^[a-z0-9]{4,32}$")
HANDSHAKE_TIMEOUT = 2.0
IDLE_TIMEOUT = 60.0  # a connection with no request for this long is cut
FRAME_TIMEOUT = 30.0  # mid-transfer: the next frame must come within this
PING_EVERY = 2.0  # keepalive while a job is quiet, so a dead link is noticed
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 16
CHUNK = 1 << 20
PIDS_MAX = 1024  # processes (threads count too) one job may have at once


WAIT_TTL = 3.0  # a refused submitter retries about every second; after this it went elsewhere
WAIT_MAX = 3600.0
CONTENTION_WINDOW = 0.25  # after a full worker frees a slot: gather contenders this long, then pick by karma


@dataclass
class _Waiting:
    job_id: str
    submitter: str
    queued_at: float
    seen: float


@dataclass
class WorkerJob:
    id: str
    submitter: str
    submitter_ip: str
    script: str
    args: list
    files: list  # manifest dicts
    executor: str
    gpu: bool
    dir: Path
    log: JobLog
    created: float = field(default_factory=time.time)
    state: str = "preparing"  # preparing, running, exited, delivered
    start_offset: int | None = None  # log offset where the job's own output starts
    proc: JobProcess | None = None
    prepare: JobProcess | None = None  # the executor's set-up step (building a venv), while it runs
    cgroup: object | None = None  # homie.cgroup.JobCgroup, shared by set-up and the job
    gpu_index: str | None = None
    ident: Identity | None = None
    extra_env: dict = field(default_factory=dict)  # the submitter's -e KEY=VAL
    timeout: float | None = None  # the submitter's --timeout, seconds
    stdin: str | None = None  # the input file the job reads as its stdin
    token_sha: str | None = None  # sha256 of the submitter's secret for this job, if it sent one
    ckpt: checkpoints.Watcher | None = None  # its checkpoint paths, and the last checkpoint taken
    evicted_by: str | None = None  # its owner took the machine back: it ends here and goes on elsewhere

    def answers_to(self, peer: str, token) -> bool:
        if self.token_sha is None:
            return peer == self.submitter  # a submitter that sends no token: the name is all there is
        if not isinstance(token, str):
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self.token_sha)
    outcome: Outcome | None = None
    results: list = field(default_factory=list)
    inputs_stat: dict = field(default_factory=dict)
    finished_at: float | None = None
    killed_by: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def summary(self) -> dict:
        o = self.outcome
        return {
            "job_id": self.id, "from": self.submitter, "script": self.script, "args": self.args,
            "status": self.state if self.state != "exited" else ("killed" if o and o.reason else "exited"),
            "created": self.created, "pid": self.pid, "code": o.code if o else None,
            "reason": o.reason if o else None,
        }


class WorkerContext:
    """What executors may use: config, the job Python, base env, and where
    things are as the job sees them (inside the sandbox, or on the host)."""

    def __init__(self, config, home, work: jobdir.WorkArea, per_job_uids: bool):
        self.config = config
        self.home = home
        self.work = work
        self.sandboxed = False  # set by the worker once the sandbox probe has run
        self.python = self._pick_python(config, per_job_uids)
        self.python_version = "%d.%d" % sys.version_info[:2]
        self.base_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",  # output must arrive live, not when the job ends
        }

    @staticmethod
    def _pick_python(config, per_job_uids: bool) -> str:
        wanted = getattr(config, "job_python", None)
        if wanted:
            return wanted
        # The base interpreter, not the daemon's virtual environment: a job gets a
        # plain Python, not homie's own dependencies.
        base = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
        if not per_job_uids or jobdir.passable_by_others(base):
            return base
        # The daemon's own interpreter may sit in a private home (e.g. /root);
        # a job's own uid needs one it can execute.
        for cand in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3") or ""):
            if cand and jobdir.passable_by_others(cand):
                return cand
        return base

    def job_path(self, job) -> str:
        """The job directory as the job sees it."""
        return sandbox.JOB_DIR if self.sandboxed else str(job.dir)

    def evict_venvs(self, keep=()) -> None:
        cap = int(self.config.venv_cache_max_gb * 2**30)
        root = Path(self.work.venvs)
        envs = []
        for d in root.iterdir() if root.exists() else []:
            try:
                ready = os.stat(d / ".homie-ready", follow_symlinks=False)
            except OSError:
                continue
            if d.name in keep or d.is_symlink():
                continue
            envs.append((ready.st_mtime, jobdir.tree_size(d), d))
        total = sum(s for _, s, _ in envs)
        for _, size, d in sorted(envs):
            if total <= cap:
                break
            jobdir.remove(d)
            total -= size


class Worker:
    def __init__(self, node):
        self.node = node
        self.config = node.config
        self.home = node.home
        self.log = node.log
        self.jobs: dict[str, WorkerJob] = {}
        self.lock = threading.Lock()
        self.paused = False
        self.suspended = False
        self.identities = Identities(parse_range(getattr(self.config, "job_uids", "61184-65519")),
                                     getattr(self.config, "job_user", None))
        try:
            self.work = jobdir.WorkArea(self.home.root, self.identities.per_job)
        except OSError as e:
            raise HomieError(f"cannot set up the job directories: {e.strerror}: {e.filename}") from None
        self.ctx = WorkerContext(self.config, self.home, self.work, self.identities.per_job)
        # The job's output log and control files live where no job can write.
        self.logs = Path(self.home.root) / "joblogs"
        old = os.umask(0o077)
        try:
            self.logs.mkdir(exist_ok=True)
        finally:
            os.umask(old)
        mode = sandbox.Mode(getattr(self.config, "sandbox", "auto"))
        self.sandbox = sandbox.probe(mode, self.identities.probe_uid(), self.ctx.python, self._private_paths())
        if mode is sandbox.Mode.REQUIRED and not self.sandbox.active:
            raise HomieError(f"sandbox: required, but {self.sandbox.reason}", 2)
        self.ctx.sandboxed = self.sandbox.active
        if self.sandbox.active:
            enable_subreaper()
        self.ctx.run_setup = self.run_setup
        self._bwrap = sandbox.bwrap_path()
        self.cgroups = Cgroups(str(self.home.root)) if sys.platform.startswith("linux") else None
        # No fsync per blob: it halves upload speed, and a blob torn by a power
        # cut is caught by the size check in _have() (docs/architecture.md).
        self.blobs = files.BlobCache(self.home.blobs, int(self.config.cache_max_gb * 2**30), fsync=False)
        self.gate = ConnectionGate(MAX_CONNECTIONS, MAX_PER_ADDRESS, handshake_deadline=HANDSHAKE_TIMEOUT)
        self._waiting: dict[str, _Waiting] = {}
        self._slot_freed_at = 0.0
        self._contended_until = 0.0
        self._reserved = 0  # slots taken by jobs still uploading
        self._incoming: set[str] = set()  # their ids
        self._executors = {}
        for group in plugins.call("homie_executors"):
            for cls in group or []:
                self._executors.setdefault(cls.name, cls)
        self.sock: socket.socket | None = None

    # -- capacity and status ---------------------------------------------
    def running(self) -> int:
        """Jobs holding a slot: running, preparing, or accepted and still uploading."""
        with self.lock:
            return self._running_locked()

    def _running_locked(self) -> int:
        return self._reserved + sum(1 for j in self.jobs.values() if j.state in ("preparing", "running"))

    def status(self) -> str:
        if self.paused:
            return "paused"
        if self.running() >= self.config.max_jobs:
            return "busy"
        if self.config.accept_jobs == "idle" and self.node.cpu_idle() < self.config.idle_threshold:
            return "busy"
        return "idle"

    def slots_free(self) -> int:
        if self.paused:
            return 0
        return max(0, self.config.max_jobs - self.running())

    def executor_names(self) -> list[str]:
        return sorted(self._executors)

    # -- the server --------------------------------------------------------
    def bind(self) -> socket.socket:
        addr = self.node.bind_address or "0.0.0.0"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, self.config.port))
        except OSError as e:
            s.close()
            raise HomieError(f"cannot listen for jobs on {addr}:{self.config.port}: {e.strerror}"
                             " (is another program using the port? set `port:` in config or pass --port)") from None
        s.listen(128)
        self.sock = s
        return s

    def serve(self, stop: threading.Event) -> None:
        self.sock.settimeout(0.5)
        while not stop.is_set():
            try:
                raw, addr = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if stop.is_set():
                    return
                time.sleep(0.05)
                continue
            ip = addr[0]
            # Seats before any TLS work: idle or half-open connections cost a seat, not a
            # handshake, and members who authenticated recently keep seats of their own.
            conn = _Conn(raw)
            d = self.gate.admit(ip, conn)
            if not d.admitted:
                self.node.rate_warn("worker.connection_refused", d.reason or "too many connections", ip=ip)
                raw.close()
                continue
            if d.victim is not None:
                d.victim.cut()  # its thread wakes, fails its handshake and gives the seat back
            threading.Thread(target=self._connection, args=(conn, ip), name=f"conn-{ip}", daemon=True).start()

    def _connection(self, conn: "_Conn", ip: str) -> None:
        ch = None
        try:
            # Small frames (hello, need, exit) must not wait for Nagle + delayed ACK (~40 ms each).
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tls = self._handshake(conn)
            except (ssl.SSLError, OSError) as e:
                self.node.rate_warn("worker.tls_refused", "TLS handshake failed (wrong key or not homie)",
                                    ip=ip, error=type(e).__name__)
                return
            if not self.gate.authenticated(conn):
                return  # evicted just as its handshake finished: the seat is someone else's
            peer = self.node.trust_peer_name(tls)
            ch = Channel(tls, Conversation(protocol.SERVER))
            ch.send("hello", name=self.node.name, proto=PROTOCOL_VERSION, homie=__version__,
                    python="%d.%d.%d" % sys.version_info[:3], instance=self.node.instance_hex)
            self._session(ch, peer, ip)
        except (ConnectionClosed, socket.timeout, TimeoutError):
            pass
        except ProtocolError as e:
            self.node.rate_warn("worker.protocol_error", "peer broke the protocol", ip=ip, error=str(e))
            if ch is not None:
                try:
                    ch.conv = None
                    ch.send("error", message=f"protocol error: {e}", code="protocol")
                except Exception:
                    pass
        except Exception as e:  # the daemon never dies of a peer's mistake
            self.log.exception("worker.connection_crashed", ip=ip, error=str(e))
        finally:
            if ch is not None:
                ch.close()
            else:
                try:
                    conn.sock.close()
                except OSError:
                    pass
            self.gate.release(conn)

    def _handshake(self, conn: "_Conn") -> ssl.SSLSocket:
        """TLS handshake with one deadline for the whole of it: a per-read
        timeout alone lets a slow-loris client trickle bytes forever."""
        import select

        raw = conn.sock
        raw.setblocking(False)
        tls = self.node.trust.server_context().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        conn.sock = tls  # the TLS socket owns the fd now: an eviction must shut that one down
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                want = ([tls], [])
            except ssl.SSLWantWriteError:
                want = ([], [tls])
            left = deadline - time.monotonic()
            if left <= 0 or not any(select.select(*want, [], left)[:2]):
                raise TimeoutError("TLS handshake took too long")
        tls.setblocking(True)
        return tls

    def _session(self, ch: Channel, peer: str, ip: str) -> None:
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
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            ch.send("error", message=f"no job {job_id} on {self.node.name} (finished and collected, expired,"
                                     " or lost in a restart of the worker)", code="unknown_job")
            return None
        if not job.answers_to(peer, msg.get("token")):
            ch.send("error", message=f"job {job_id} on {self.node.name} is {job.submitter}'s", code="forbidden")
            return None
        return job

    # -- submit: negotiate, upload, start ---------------------------------
    def _on_submit(self, ch: Channel, msg: Message, peer: str, ip: str) -> None:
        job_id = msg["job_id"]
        refusal = self._refusal(msg, peer)
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
        with self.lock:
            # A job id is one job on this worker: while one is uploading, running or
            # holding results, a second submit with its id is refused.
            if job_id in self.jobs or job_id in self._incoming or not JOB_ID_RE.match(job_id):
                ch.send("error", message=f"bad or duplicate job id {job_id!r}", code="bad_job")
                return
            # Take the slot now, not when the upload is done: two submitters
            # checking at the same moment must not both get the last one.
            if self._running_locked() >= self.config.max_jobs:
                ch.send("refuse", reason=f"{self.node.name} is busy ({self.config.max_jobs}/"
                                         f"{self.config.max_jobs} jobs)", code="busy")
                return
            self._reserved += 1
            self._incoming.add(job_id)
        slot = {"reserved": True}
        try:
            self._accept(ch, msg, entries, peer, ip, slot)
        finally:
            with self.lock:
                self._incoming.discard(job_id)
                if slot["reserved"]:
                    self._reserved -= 1

    def _accept(self, ch: Channel, msg: Message, entries: list, peer: str, ip: str, slot: dict) -> None:
        sizes = {e.sha256: e.size for e in entries}
        shas = sorted(sizes)
        need = [s for s in shas if not self._have(s, sizes[s])]
        ch.send("need", hashes=need)
        with self.blobs.pinned(shas):
            try:
                self._receive_blobs(ch, set(need), sizes)
            except OSError as e:
                ch.send("error", message=f"{self.node.name} cannot store the upload: {e.strerror or e}", code="disk")
                self._discard_rest(ch)
                return
            except ManifestError as e:
                ch.send("error", message=str(e), code="bad_upload")
                self._discard_rest(ch)
                return
            job = self._materialize(ch, msg, entries, peer, ip, slot)
        if job is None:
            return
        self._stream(ch, job, 0)

    @staticmethod
    def _discard_rest(ch: Channel, seconds: float = 5.0) -> None:
        """After refusing an upload, read and drop what is still in flight until
        the submitter hangs up: closing with unread data would reset the
        connection and could destroy the error message before it is read."""
        ch.conv = None
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                ch.recv(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            pass
        raise ConnectionClosed("upload refused")

    def _refusal(self, msg: Message, peer: str) -> tuple[str, str] | None:
        if self.paused:
            return ("paused", f"{self.node.name} is paused by its owner")
        free = self.config.max_jobs - self.running()
        ahead = self._ahead_of(msg["job_id"], peer, free)
        if free <= 0:
            return ("busy", f"{self.node.name} is busy ({self.running()}/{self.config.max_jobs} jobs)")
        if ahead:
            return ("busy", f"{self.node.name} is busy (its next slot goes to {ahead}'s job)")
        if self.config.accept_jobs == "idle" and self.node.cpu_idle() < self.config.idle_threshold:
            return ("busy", f"{self.node.name} is in use by its owner")
        if msg.get("gpu"):
            if not self.config.allow_gpu:
                return ("gpu", f"{self.node.name} does not lend its GPU")
            if not self.node.resources().get("gpus"):
                return ("gpu", f"{self.node.name} has no GPU")
        ex = msg.get("executor") or "auto"
        if ex != "auto" and ex not in self._executors:
            return ("executor", f"{self.node.name} has no executor {ex!r} (has: {', '.join(self.executor_names())})")
        return None

    def _ahead_of(self, job_id: str, submitter: str, free: int) -> str | None:
        """Who gets the free slots when several submitters want them.

        Jobs refused for lack of a slot are remembered for a few seconds
        (their submitters retry about every second); when slots free up they
        go in the order the homie_order_queue plugins decide (the karma plugin:
        friends who gave the most first), arrival order otherwise. Returns the
        submitter this job must let go first, or None.
        """
        now = time.monotonic()
        with self.lock:
            w = self._waiting.get(job_id)
            self._waiting[job_id] = _Waiting(job_id, submitter, w.queued_at if w else time.time(), now)
            # Submitters stop asking while our heartbeats say busy, so an entry
            # lives until WAIT_TTL after it was last asked for or after a slot
            # last came free, whichever is later (and never beyond WAIT_MAX).
            for jid in [j for j, e in self._waiting.items()
                        if (now - max(e.seen, self._slot_freed_at) > WAIT_TTL) or now - e.seen > WAIT_MAX]:
                del self._waiting[jid]
            waiting = list(self._waiting.values())
        if free <= 0:
            return None
        # A slot that just came free after a busy spell: every submitter queued
        # for it reacts to our heartbeat within moments. Gather them before
        # choosing, or the slot goes to whoever's packet was fastest.
        wait = self._contended_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        with self.lock:
            waiting = list(self._waiting.values())
        karma = {p.name: balance(p.karma) for p in self.node.peers.snapshot()}
        order = plugins.call("homie_order_queue", jobs=waiting, karma=karma)
        if not order:
            order = sorted(waiting, key=lambda e: e.queued_at)
        first = [e.job_id for e in order[:free]]
        if job_id in first:
            with self.lock:
                self._waiting.pop(job_id, None)
            return None
        return order[0].submitter

    def _have(self, sha: str, size: int) -> bool:
        if not self.blobs.has(sha):
            return False
        try:
            if os.stat(self.blobs.path(sha)).st_size == size:
                return True
        except OSError:
            pass
        self.blobs.discard(sha)
        return False

    def _receive_blobs(self, ch: Channel, need: set, sizes: dict) -> None:
        pipe = Pipeline()
        try:
            while True:
                msg = ch.recv_msg("blob", "upload_done", timeout=FRAME_TIMEOUT)
                if msg.t == "upload_done":
                    if need:
                        raise ManifestError(f"upload ended with {len(need)} file(s) missing")
                    return
                sha, size = msg["sha256"], msg["size"]
                if sha not in need or sizes.get(sha) != size:
                    raise ManifestError("upload of a file that was not asked for")
                w = self.blobs.writer(sha, size)
                try:
                    got = 0
                    while got < size:
                        buf = pipe.buffer()
                        ev = ch.recv(timeout=FRAME_TIMEOUT, into=buf)
                        if not isinstance(ev, Data):
                            pipe.give_back(buf)
                            raise ManifestError(f"file upload cut short ({got} of {size} bytes)")
                        n = len(ev.data)
                        got += n
                        if got > size:
                            pipe.give_back(buf)
                            raise ManifestError("file upload longer than announced")
                        w.hash_apart(ev.data)  # here, while the pipeline thread writes the previous chunk
                        pipe.put(w.write, buf, n)
                    pipe.drain()
                    w.commit()
                except BaseException:
                    pipe.drain_quietly()
                    w.abort()
                    raise
                need.discard(sha)
        finally:
            pipe.close()

    def _materialize(self, ch, msg, entries, peer, ip, slot: dict) -> WorkerJob | None:
        job_id = msg["job_id"]
        try:
            ident = self.identities.acquire(job_id)
        except HomieError as e:
            ch.send("error", message=f"{self.node.name} cannot run the job: {e}", code="setup")
            return None
        try:
            # Hard links share the blob's inode: safe only when the job's uid is not
            # the blob's owner (a job running as the daemon's user could chmod and
            # rewrite a cached input in place for the next job).
            jd = self.work.build(job_id, entries, self.blobs, ident, link=ident.differs,
                                 sandboxed=self.sandbox.active, mkdirs=(checkpoints.DEFAULT_DIR,))
            self.blobs.evict(keep={e.sha256 for e in entries})
            log = JobLog(self.logs / f"{job_id}.log")
        except (OSError, HomieError) as e:
            self.identities.release(job_id)
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            ch.send("error", message=f"{self.node.name} cannot prepare the job directory: {why}", code="disk")
            return None
        job = WorkerJob(
            id=job_id, submitter=peer, submitter_ip=ip, script=msg["script"], args=list(msg["args"]),
            files=[e.to_dict() for e in entries], executor=msg.get("executor") or "auto",
            gpu=bool(msg.get("gpu")), dir=jd, log=log, ident=ident, extra_env=dict(msg.get("env") or {}),
            timeout=msg.get("timeout"), stdin=msg.get("stdin"),
            token_sha=hashlib.sha256(msg["token"].encode()).hexdigest() if msg.get("token") else None,
        )
        job.ckpt = checkpoints.Watcher(jd, checkpoints.normalize(msg.get("checkpoints")),
                                       interval=max(1.0, float(msg.get("checkpoint_interval") or 60.0)))
        job.ckpt.prime()  # a checkpoint restored from an earlier attempt is not a new one
        job.inputs_stat = jobdir.scan(jd)
        with self.lock:
            self.jobs[job_id] = job
            self._reserved -= 1  # the job itself holds the slot from here on
            slot["reserved"] = False
        self.node.store.worker_job(job_id, {"state": "preparing", "dir": str(jd), "from": peer,
                                            "uid": ident.uid if self.identities.per_job else None})
        self.log.info("job.accepted", job_id=job_id, submitter=peer, script=job.script, files=len(entries),
                      uid=ident.uid, sandbox=self.sandbox.label)
        threading.Thread(target=self._run, args=(job,), name=f"job-{job_id}", daemon=True).start()
        return job

    # -- running -------------------------------------------------------------
    def _executor_for(self, job: WorkerJob):
        # Bound to the job: the plugin's executor sees a read-only homie.api.Job, never WorkerJob.
        return execution.bind(self._executors, job, self.ctx)

    def launch(self, job: WorkerJob, argv: list[str], env: dict, *, venv: str | None = None,
               venv_writable: bool = False, umask: int = 0o077, job_dir: Path | None = None) -> Launch:
        """How to start `argv` with `env` for `job`: in its sandbox, cgroup and identity."""
        ident = job.ident
        per_job_uid = self.identities.per_job and ident.differs
        env = {**env, "HOMIE_JOB_ID": job.id}
        cg = job.cgroup
        if cg is None and self.cgroups is not None and self.cgroups.parents:
            mem = int(self.config.max_job_memory_gb * 2**30) if self.config.max_job_memory_gb else None
            cg = job.cgroup = self.cgroups.create(job.id, mem, PIDS_MAX)
        cg = cg if cg is not None and cg.dirs else None
        prefix: list[str] = []
        if cg is None or "pids" not in self.cgroups.limits:
            # No pids cgroup: RLIMIT_NPROC, which counts every process of the uid,
            # the owner's own included when jobs share the daemon's uid.
            base = 0 if per_job_uid else len(processes_of_uid(ident.uid))
            prlimit = sandbox.system_tool("prlimit")
            if prlimit:
                prefix = [prlimit, f"--nproc={base + PIDS_MAX}", "--"]
        if not self.sandbox.active:
            return Launch(argv=[*prefix, *argv], cwd=str(job_dir or job.dir), env=env, user=ident, cgroup=cg,
                          uid_sweep=ident.uid if per_job_uid else None, umask=umask)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe() if cg is not None else (None, None)
        gpus = [job.gpu_index] if job.gpu and job.gpu_index is not None else None
        spec = sandbox.Spec(
            job_dir=str(job_dir or job.dir), venv=venv, venv_writable=venv_writable,
            network=self.config.job_network, gpus=gpus, ro_paths=list(self.config.sandbox_ro_paths),
            tmp_bytes=int(self.config.sandbox_tmp_mb * 2**20), env=env, info_fd=info_w, block_fd=block_r)
        # Nothing of the job's reaches bubblewrap itself: its environment and
        # the options are inside the args memfd and set only in the sandbox.
        argv, argv_fd = sandbox.long_command(argv, self.ctx.python)
        args, cmd = sandbox.args_fd(sandbox.options(argv, spec, python=self.ctx.python,
                                                    disable_userns=self.sandbox.disable_userns,
                                                    private=self._private_paths()))
        pass_fds = tuple(fd for fd in (args, info_w, block_r, argv_fd) if fd is not None)
        return Launch(argv=[*prefix, self._bwrap, "--args", str(args), "--", *cmd], cwd="/",
                      env={"PATH": sandbox.SYSTEM_PATH},
                      user=ident, cgroup=cg, info_fd=info_r, block_w=block_w, pass_fds=pass_fds, umask=umask)

    def _private_paths(self) -> tuple[str, ...]:
        """What no bind may expose: the owner's home and the homie home."""
        return tuple(p for p in (os.path.expanduser("~"), str(self.home.root)) if p and p != "/")

    def run_setup(self, job: WorkerJob, argv: list[str], *, env: dict, venv: str | None = None,
                  venv_writable: bool = False, job_dir: Path | None = None) -> Outcome:
        """Run an executor's set-up step (building a venv) as the job, in its
        sandbox, with its output in the job's log; the job's kill reaches it."""
        limits = Limits(max_seconds=self.config.max_job_seconds)
        # umask 022: what a set-up step builds (a venv) is shared read-only with later jobs of other uids.
        proc = JobProcess(job.id, self.launch(job, argv, env, venv=venv, venv_writable=venv_writable, umask=0o022,
                                              job_dir=job_dir), job.log, limits, finish_log=False)
        job.prepare = proc
        try:
            if job.killed_by:
                raise HomieError(f"killed by {job.killed_by} before it started")
            proc.start()
            return proc.wait()
        finally:
            job.prepare = None

    @staticmethod
    def _binds(ex, job: WorkerJob) -> dict:
        """What an executor needs bound into the sandbox (the venv executor: its environment)."""
        venv_dir = getattr(ex, "venv_dir", None)
        return {"venv": venv_dir(job)} if venv_dir else {}

    def _job_env(self, job: WorkerJob) -> dict:
        env = dict(self.ctx.base_env)
        if self.sandbox.active:
            home, tmp = sandbox.HOME_DIR, "/tmp"
        else:
            home, tmp = str(job.dir), str(job.dir / files.RESERVED_DIR / "tmp")
        env.update({
            "HOME": home,
            "TMPDIR": tmp,
            "HOMIE_SUBMITTER": job.submitter,
            "HOMIE_PEER": self.node.name,
            # Importing a shipped module must not write pkg/__pycache__/*.pyc into the
            # job directory: it would come back as a "result" (the inputs never carry it).
            "PYTHONDONTWRITEBYTECODE": "1",
            # Where a checkpoint goes to be carried home and restored if the job moves.
            "HOMIE_CHECKPOINT_DIR": (f"{sandbox.JOB_DIR}/{checkpoints.DEFAULT_DIR}" if self.sandbox.active
                                     else str(job.dir / checkpoints.DEFAULT_DIR)),
        })
        # The submitter's own variables; homie's names stay homie's.
        env.update({k: v for k, v in job.extra_env.items() if not k.startswith("HOMIE_")})
        if job.gpu:
            gpus = self.node.resources().get("gpus") or []
            best = max(gpus, key=lambda g: g.get("mem_free_gb") or 0) if gpus else None
            job.gpu_index = str(best.get("index", 0)) if best else "0"
            env["CUDA_VISIBLE_DEVICES"] = job.gpu_index
        else:
            # A job that did not ask for a GPU does not get to take the owner's.
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def _run(self, job: WorkerJob) -> None:
        outcome = Outcome()
        try:
            ex = self._executor_for(job)
            ex.prepare(job, job.log.append)
            if job.killed_by:
                raise HomieError(f"killed by {job.killed_by} before it started")
            argv, extra_env = ex.command(job)
            env = {**self._job_env(job), **extra_env}
            limits = Limits(
                max_seconds=min((t for t in (self.config.max_job_seconds, job.timeout) if t), default=None),
                max_memory_bytes=int(self.config.max_job_memory_gb * 2**30) if self.config.max_job_memory_gb else None,
            )
            job.start_offset = job.log.end
            proc = JobProcess(job.id, self.launch(job, argv, env, **self._binds(ex, job)), job.log, limits)
            stdin = None
            if job.stdin:
                # Opened by the daemon before the job runs, never through a link.
                stdin = os.fdopen(jobdir.open_beneath(job.dir, job.stdin), "rb")
            try:
                proc.start(stdin=stdin)
            finally:
                if stdin is not None:
                    stdin.close()
            job.proc = proc
            job.state = "running"
            if self.suspended:
                proc.signal(signal.SIGSTOP)
            self.node.store.worker_job(job.id, {"state": "running", "dir": str(job.dir), "pid": proc.pid,
                                               "uid": job.ident.uid if self.identities.per_job else None,
                                               "from": job.submitter})
            self.log.info("job.started", job_id=job.id, pid=proc.pid, argv0=os.path.basename(argv[0]))
            self.node.announce_soon()
            outcome = proc.wait()
        except HomieError as e:
            job.log.append(protocol.STDERR, f"homie: {e}\n".encode())
            outcome = Outcome(code=None, reason=str(e))
        except FileNotFoundError as e:
            job.log.append(protocol.STDERR, f"homie: cannot start the job: {e}\n".encode())
            outcome = Outcome(code=None, reason=f"cannot start the job: {e.strerror}: {e.filename}")
        except Exception as e:
            self.log.exception("job.crashed", job_id=job.id)
            outcome = Outcome(code=None, reason=f"worker error: {type(e).__name__}: {e}")
        if job.evicted_by:
            outcome.reason = f"evicted: {job.evicted_by}"
            self._final_checkpoint(job)
        elif job.killed_by and not outcome.reason:
            outcome.reason = f"killed by {job.killed_by}"
        if job.cgroup is not None:
            job.cgroup.kill()  # nothing of the job may outlive it, whatever it did
            job.cgroup.remove()
            job.cgroup = None
        self._reclaim(job)
        try:
            job.results = self._results(job)
        except Exception as e:
            self.log.exception("job.results_failed", job_id=job.id)
            if not outcome.reason:
                outcome.reason = f"could not collect results: {e}"
        job.outcome = outcome
        job.finished_at = time.time()
        was_full = self.running() >= self.config.max_jobs  # still counts this job
        job.state = "exited"
        self._slot_freed_at = time.monotonic()
        if was_full:
            self._contended_until = self._slot_freed_at + CONTENTION_WINDOW
        job.log.finish()
        job.done.set()
        self.node.store.worker_job(job.id, {"state": "exited", "dir": str(job.dir), "from": job.submitter})
        gpu_s = outcome.wall_s if job.gpu else 0.0
        self.node.karma.record(job.submitter, given=True, cpu_s=outcome.cpu_s, wall_s=outcome.wall_s,
                               gpu_s=gpu_s, job_id=job.id)
        self.log.info("job.exited", job_id=job.id, code=outcome.code, signal=outcome.signal,
                      reason=outcome.reason, cpu_s=outcome.cpu_s, wall_s=outcome.wall_s, results=len(job.results))
        self.node.announce_soon()

    def _final_checkpoint(self, job: WorkerJob) -> None:
        """What the job left in its checkpoint paths once it stopped: nothing can change it any more."""
        if job.ckpt is None:
            return
        try:
            job.ckpt.poll(final=True)
        except (HomieError, OSError) as e:
            job.log.append(protocol.STDERR, f"homie: no final checkpoint: {e}\n".encode())

    def _reclaim(self, job: WorkerJob) -> None:
        """Its processes gone, a job's directory goes back to the daemon and its
        uid back to the pool at once, not when the results are collected: a
        friend who never collects cannot hold uids for a day. A directory too
        deep to take back keeps its uid until it is removed."""
        if not (self.identities.per_job and job.ident and job.ident.differs):
            return
        try:
            jobdir.give(job.dir, os.geteuid(), os.getegid(), shared_blobs=False)
        except (OSError, HomieError) as e:
            self.log.warning("job.reclaim_failed", job_id=job.id, error=str(e))
            return
        self.identities.release(job.id)

    def _results(self, job: WorkerJob) -> list[dict]:
        # The job's processes are all gone by now (pid namespace, cgroup, uid
        # sweep), and every open below is by descriptor with O_NOFOLLOW: what a
        # job left as a symlink is skipped, never followed.
        changed = jobdir.changed(job.dir, job.inputs_stat)
        out = []
        seen = set()
        for rel in changed:
            # A job can create names a manifest refuses; skip those, say so, send the rest.
            try:
                files.check_relpath(rel)
                folded = files._fold(rel)
                if folded in seen:
                    raise ManifestError(f"{rel!r} clashes with another result name")
                seen.add(folded)
            except ManifestError as e:
                job.log.append(protocol.STDERR, f"homie: not sending result {e}\n".encode())
                continue
            try:
                fd = jobdir.open_beneath(job.dir, rel)
            except (OSError, ManifestError):
                continue
            try:
                size, sha = jobdir.sha256_fd(fd)
                mode = 0o755 if os.fstat(fd).st_mode & 0o100 else 0o644
            except OSError:
                continue
            finally:
                os.close(fd)
            out.append({"path": rel, "mode": mode, "size": size, "sha256": sha})
        # A job that wrote into a hard-linked input changed the cached blob too: drop it.
        for e in job.files:
            try:
                if self.blobs.has(e["sha256"]):
                    st = os.stat(self.blobs.path(e["sha256"]))
                    if st.st_size != e["size"]:
                        self.blobs.discard(e["sha256"])
            except OSError:
                pass
        return out

    # -- streaming output ----------------------------------------------------
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
            if job.done.is_set() and offset >= job.log.end:
                o = job.outcome
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

    # -- results ---------------------------------------------------------------
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
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for path in want:
            entry = by_path.get(path) if isinstance(path, str) else None
            if entry is None:
                ch.send("error", message=f"no result file {str(path)[:100]!r}", code="bad_request")
                return
            ch.send("blob", sha256=entry["sha256"], size=entry["size"])
            with os.fdopen(jobdir.open_beneath(job.dir, entry["path"]), "rb") as f:
                left = entry["size"]
                while left > 0:
                    n = f.readinto(view[: min(CHUNK, left)])
                    if not n:
                        raise ConnectionClosed("result file shrank while sending")
                    ch.send_data(view[:n])
                    left -= n
        ch.send("results_done")

    def _on_ack(self, ch, msg, peer, ip) -> None:
        with self.lock:
            job = self.jobs.get(msg["job_id"])
        if job is not None and not job.answers_to(peer, msg.get("token")):
            ch.send("error", message=f"job {job.id} on {self.node.name} is {job.submitter}'s", code="forbidden")
            return
        if job is not None and job.done.is_set():
            self._drop(job, "delivered")
        ch.send("ok")

    def _drop(self, job: WorkerJob, why: str) -> None:
        with self.lock:
            self.jobs.pop(job.id, None)
        if job.ckpt is not None:
            job.ckpt.close()
        job.log.close()
        try:
            jobdir.remove(job.dir)
        except OSError as e:  # whatever a job left, the daemon goes on
            self.log.warning("job.remove_failed", job_id=job.id, error=str(e))
        _unlink(Path(job.log.path))
        self.identities.release(job.id)  # if still held: its files were that uid's until removed
        self.node.store.worker_job_done(job.id)
        # The lending machine remembers what ran on it (homie ps --all there).
        summary = job.summary()
        summary.update(args=_cut_args(job.args), finished=job.finished_at, why=why)
        self.node.store.worker_history_add(job.id, summary)
        self.log.info("job.removed", job_id=job.id, why=why)

    # -- signals -----------------------------------------------------------------
    def _on_signal(self, ch, msg, peer, ip) -> None:
        with self.lock:
            job = self.jobs.get(msg["job_id"])
        if job is None:
            ch.send("error", message=f"no job {msg['job_id']} on {self.node.name}", code="unknown_job")
            return
        if not job.answers_to(peer, msg.get("token")):
            ch.send("error", message=f"only {job.submitter} (who submitted it) or {self.node.name}'s owner may"
                                     f" signal job {job.id}", code="forbidden")
            return
        self.signal_job(job, msg["sig"], by=peer)
        ch.send("ok")

    def signal_job(self, job: WorkerJob, sig: int, by: str) -> None:
        if sig in (signal.SIGKILL, signal.SIGTERM):
            job.killed_by = job.killed_by or by
        target = job.proc or job.prepare
        if target is None:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM):
            target.kill(f"killed by {by}")
        else:
            target.signal(sig)
        if job.proc is None and sig == signal.SIGINT:
            job.killed_by = by  # Ctrl-C while its environment is built: it never starts

    def find(self, prefix: str) -> list[WorkerJob]:
        with self.lock:
            return [j for j in self.jobs.values() if j.id.startswith(prefix)]

    def pause(self, suspend: bool, evict: bool = False) -> None:
        self.paused = True
        if evict:
            self.evict_all(f"{self.node.name}'s owner took the machine back (homie pause --evict)")
        elif suspend:
            self.suspended = True
            for j in list(self.jobs.values()):
                if j.proc and not j.proc.done:
                    j.proc.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.paused = False
        if self.suspended:
            self.suspended = False
            for j in list(self.jobs.values()):
                if j.proc and not j.proc.done:
                    j.proc.signal(signal.SIGCONT)

    # -- eviction and checkpoints ---------------------------------------------------
    def evict_all(self, why: str) -> int:
        """Every job here stops (SIGTERM, then SIGKILL after evict_grace_seconds),
        leaves its last checkpoint, and its submitter runs it on elsewhere."""
        n = 0
        for job in [j for j in list(self.jobs.values()) if not j.done.is_set() and not j.evicted_by]:
            job.evicted_by = why
            job.killed_by = job.killed_by or "eviction"
            target = job.proc or job.prepare
            if target is not None:
                target.kill(f"evicted: {why}", grace=self.config.evict_grace_seconds)
            n += 1
            self.log.info("job.evicted", job_id=job.id, submitter=job.submitter, why=why)
        return n

    def lending_loop(self, stop: threading.Event) -> None:
        """About every second: take the checkpoints that are due; every few
        seconds under accept_jobs: idle, see whether the owner is back."""
        owner = OwnerWatch(self.config.idle_threshold)
        next_owner = 0.0
        while not stop.wait(1.0):
            with self.lock:
                running = [j for j in self.jobs.values() if j.state == "running" and not j.done.is_set()]
            for job in running:
                if job.ckpt is None or job.evicted_by or (job.proc is not None and job.proc.done):
                    continue
                try:
                    if job.ckpt.poll():
                        self.log.info("job.checkpoint", job_id=job.id, seq=job.ckpt.seq,
                                      bytes=job.ckpt.snapshot.size if job.ckpt.snapshot else 0)
                except (HomieError, OSError) as e:
                    self.node.rate_warn("job.checkpoint_failed", "cannot take a checkpoint", job_id=job.id,
                                        error=str(e))
                except Exception:
                    self.log.exception("job.checkpoint_crashed", job_id=job.id)
            if self.config.accept_jobs != "idle" or time.monotonic() < next_owner:
                continue
            next_owner = time.monotonic() + SAMPLE_EVERY
            if not running:
                owner.reset()
                continue
            try:
                back = owner.sample({j.id: j.proc.cpu_seen for j in running if j.proc is not None})
            except Exception:
                self.log.exception("owner.sample_failed")
                continue
            if back:
                n = self.evict_all(f"{self.node.name}'s owner is using it"
                                   f" ({owner.owner_percent:.0f}% CPU outside homie's jobs)")
                if n:
                    self.node.announce_soon()
                owner.reset()

    # -- housekeeping --------------------------------------------------------------
    def janitor(self) -> None:
        """Drop finished jobs whose submitter never collected the results."""
        keep = self.config.keep_results_hours * 3600
        now = time.time()
        for job in list(self.jobs.values()):
            if job.done.is_set() and job.finished_at and now - job.finished_at > keep:
                try:
                    self._drop(job, "expired")
                except Exception:
                    self.log.exception("job.expire_failed", job_id=job.id)

    def recover(self) -> None:
        """After a crash or kill -9, jobs of the previous run have no one to
        report to: kill what still runs of them and clear their directories."""
        swept = self.cgroups.sweep() if self.cgroups is not None else 0
        for job_id, rec in self.node.store.worker_jobs().items():
            try:
                killed = self._recover_one(job_id, rec)
            except Exception:  # one job's leftovers must not keep the daemon from starting
                self.log.exception("job.recover_failed", job_id=job_id)
                killed = 0
            self.node.store.worker_job_done(job_id)
            self.log.warning("job.lost_in_restart", job_id=job_id, killed=killed + swept, submitter=rec.get("from"))
        for stale in list(self.work.staging.iterdir()):
            try:
                jobdir.remove(stale)
            except OSError as e:
                self.log.warning("job.remove_failed", path=str(stale), error=str(e))

    def _recover_one(self, job_id: str, rec: dict) -> int:
        uid = rec.get("uid")
        if uid is not None:
            # A per-job uid was that job's alone, unless another daemon has
            # given it out again since our crash released its lock.
            pids = [] if self.identities.in_use_elsewhere(uid) else processes_of_uid(uid)
        else:
            pids = processes_of_job(job_id, os.geteuid())
        for p in pids:
            try:
                p.kill()
            except Exception:
                pass
        d = Path(rec["dir"]) if rec.get("dir") else None
        if d is not None and d.parent == self.work.root and d.name == job_id:
            jobdir.remove(d)
        _unlink(self.logs / f"{job_id}.log")
        return len(pids)

    def shutdown(self, grace: float = 3.0) -> None:
        jobs = [j for j in list(self.jobs.values()) if not j.done.is_set()]
        for j in jobs:
            self.signal_job(j, signal.SIGTERM, by=f"{self.node.name}'s owner (homie down)")
        deadline = time.monotonic() + grace
        for j in jobs:
            j.done.wait(max(0.0, deadline - time.monotonic()))
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass


def _cut_args(args: list[str], budget: int = 2048) -> list[str]:
    """A job's arguments as far as `budget` characters go (history, not a replay)."""
    out, used = [], 0
    for a in args:
        if used + len(a) > budget:
            out.append("…")
            break
        out.append(a)
        used += len(a) + 1
    return out


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


class _Conn:
    """A connection's seat at the gate; follows the socket from raw to TLS."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def cut(self) -> None:
        # The OS socket's shutdown, not SSLSocket's: a pending handshake then fails as EOF.
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
