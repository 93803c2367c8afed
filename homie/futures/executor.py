"""The Executor: tasks queued here, batched into homie jobs, their outcomes set on their futures."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from homie.errors import HomieError, error_for
from homie.futures.errors import PeerEnvironmentError, RemoteError
from homie.futures.pickling import RUNNER, _cloudpickle, _cloudpickle_zip, outcome, pack, unpack_results
from homie.futures.tasks import _Batch, _Future, _notify_cancelled, _Task

DEFAULT_RETRIES = 2


class Executor(cf.Executor):
    """Run Python functions on the group's machines, through the local homie daemon.

    client: a homie.Client (default: Client()); max_workers: jobs in flight at once (default:
    every slot of the peers seen, this machine's included); max_batch: at most this many tasks
    in one job; batch_window: seconds submit() waits for more tasks to put in the same job;
    peer, gpu, env, timeout (seconds per job), retries (runs again elsewhere when a peer is
    lost; default 2): as for Client.run; files, directory: data or modules every task's job
    directory gets (its cwd; the directory's modules are importable); requirements: pip
    requirement lines installed on the peer into a cached virtual environment (the venv
    executor); pickle_by_value: modules whose functions travel as code, not as a reference to
    be imported on the peer (cloudpickle.register_pickle_by_value); echo: print the tasks'
    output here, each line prefixed with its peer; output_dir: where files the tasks write
    come home (default: nowhere); keep_jobs: leave the jobs in `homie ps --all` afterwards.
    """

    def __init__(self, client=None, *, max_workers: int | None = None, max_batch: int = 512,
                 batch_window: float = 0.005, peer: str | None = None, gpu: bool = False, env: dict | None = None,
                 timeout: float | None = None, retries: int = DEFAULT_RETRIES, files=(), directory=None,
                 requirements: list[str] | None = None, pickle_by_value=(), echo: bool = True,
                 output_dir=None, keep_jobs: bool = False, name: str = "homie.futures"):
        from homie.client import Client

        cloudpickle = _cloudpickle()
        self.client = client if client is not None else Client()
        self.max_batch = max(1, int(max_batch))
        self.batch_window = batch_window
        self.peer, self.gpu, self.env, self.timeout, self.retries = peer, gpu, env, timeout, retries
        self.files = [os.path.abspath(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        self.directory = os.path.abspath(directory) if directory is not None else None
        self.echo = echo
        self.output_dir = output_dir
        self.keep_jobs = keep_jobs
        self.name = name
        registered = cloudpickle.list_registry_pickle_by_value()
        self._by_value = [m for m in pickle_by_value if m.__name__ not in registered]
        for m in self._by_value:
            cloudpickle.register_pickle_by_value(m)
        self._dir = Path(tempfile.mkdtemp(prefix="homie-futures-"))
        os.chmod(self._dir, 0o755)
        shutil.copyfile(Path(__file__).parent.parent / "pyrunner.py", self._dir / RUNNER)
        _cloudpickle_zip(self._dir / "_homie_cloudpickle.zip")
        self._base_files = [str(self._dir / "_homie_cloudpickle.zip")]
        if requirements:
            (self._dir / "requirements.txt").write_text("".join(f"{r}\n" for r in requirements))
            self._base_files.append(str(self._dir / "requirements.txt"))
        self._max_workers = max_workers
        self._lock = threading.Condition()
        self._pending: deque[_Task] = deque()
        self._running: dict[int, _Batch] = {}
        self._threads: list[threading.Thread] = []
        self._ids = itertools.count(1)
        self._seqs = itertools.count(1)
        self._shutdown = False
        self._avg_seconds: float | None = None
        self._first_pending = 0.0
        self._out_lock = threading.Lock()
        import weakref

        weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        self._dispatcher = threading.Thread(target=self._dispatch, name="homie-futures", daemon=True)
        self._dispatcher.start()

    # -- the concurrent.futures API --
    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Schedule fn(*args, **kwargs) on a peer; returns its Future. The task may share a job
        with others submitted within batch_window seconds."""
        return self._submit_many([(fn, args, kwargs)])[0]

    def map(self, fn, *iterables, timeout: float | None = None, chunksize: int | None = None, buffersize=None):
        """Like map(fn, *iterables), run on the peers; results in order. chunksize: tasks per job
        (default: spread evenly over the free slots, at most max_batch per job). A task's exception
        is raised when its result is reached."""
        items: list[tuple] = [(fn, args, {}) for args in zip(*iterables, strict=False)]
        futures = self._submit_many(items, chunk=chunksize if chunksize and chunksize > 0 else None)
        deadline = None if timeout is None else time.monotonic() + timeout

        def results():
            try:
                futures.reverse()
                while futures:
                    f = futures.pop()
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    yield f.result(left)
            finally:
                for f in futures:
                    f.cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; cancel_futures: cancel those not yet sent to a peer; wait: until every
        task sent has its outcome (and the executor's temporary files are removed)."""
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    t = self._pending.popleft()
                    t.future.cancel()
                    _notify_cancelled(t.future)
            self._lock.notify_all()
        if wait:
            self._dispatcher.join()
            for th in list(self._threads):
                th.join()
            shutil.rmtree(self._dir, ignore_errors=True)
            for m in self._by_value:  # what this executor registered, it unregisters
                _cloudpickle().unregister_pickle_by_value(m)
            self._by_value = []

    # -- inside --
    def _submit_many(self, items, chunk: int | None = None) -> list[cf.Future]:
        out = []
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not self._pending:
                self._first_pending = time.monotonic()
            for fn, args, kwargs in items:
                task = _Task(next(self._ids), fn, args, kwargs, chunk=chunk)
                task.future = _Future(self, task)
                self._pending.append(task)
                out.append(task.future)
            self._lock.notify_all()
        return out

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _slots(self) -> int:
        if self._max_workers is None:
            try:
                peers = self.client.peers(include_self=True)
            except HomieError:
                peers = []
            if self.peer:
                peers = [p for p in peers if p.name == self.peer]
            self._max_workers = max(1, sum(max(1, p.max_jobs or 1) for p in peers if p.status != "paused"))
        return self._max_workers

    def _batch_size(self, free: int) -> int:
        head = self._pending[0]
        if head.chunk:
            return head.chunk
        n = math.ceil(len(self._pending) / max(1, free))
        if self._avg_seconds:
            # a job of about 2 s at most once tasks are known to be slow: no straggler holds many
            n = min(n, max(1, int(2.0 / self._avg_seconds)))
        return max(1, min(self.max_batch, n))

    def _dispatch(self) -> None:
        slots = None
        while True:
            with self._lock:
                while True:
                    self._drop_cancelled()
                    if self._shutdown and not self._pending:
                        return
                    if self._pending:
                        if slots is None:
                            self._lock.release()
                            try:
                                slots = self._slots()
                            finally:
                                self._lock.acquire()
                            continue
                        wait = self._first_pending + self.batch_window - time.monotonic()
                        if len(self._running) < slots and (wait <= 0 or len(self._pending) >= self.max_batch
                                                           or self._pending[0].chunk):
                            break
                        self._lock.wait(max(wait, 0.001) if len(self._running) < slots else None)
                    else:
                        self._lock.wait()
                size = self._batch_size(slots - len(self._running))
                tasks: list[_Task] = []
                chunk = self._pending[0].chunk
                while self._pending and len(tasks) < size and self._pending[0].chunk == chunk:
                    t = self._pending.popleft()
                    if t.future.running() or t.future.set_running_or_notify_cancel():
                        tasks.append(t)
                if self._pending:
                    self._first_pending = time.monotonic() - self.batch_window  # the rest may go at once
                if not tasks:
                    continue
                batch = _Batch(next(self._seqs), tasks)
                for t in tasks:
                    t.batch = batch
                self._running[batch.seq] = batch
                th = threading.Thread(target=self._run_batch, args=(batch,), name=f"homie-futures-{batch.seq}",
                                      daemon=True)
                self._threads = [x for x in self._threads if x.is_alive()] + [th]
            th.start()

    def _drop_cancelled(self) -> None:
        if any(t.future.cancelled() for t in self._pending):
            keep: deque[_Task] = deque()
            for t in self._pending:
                if t.future.cancelled():
                    _notify_cancelled(t.future)
                else:
                    keep.append(t)
            self._pending = keep

    def _cancel_running(self, task: _Task) -> bool:
        with self._lock:
            batch = task.batch
            if task.future.done():
                return task.future.cancelled()
            if batch is None or batch.seq not in self._running:  # between jobs: about to run again
                task.future._cancel_now()
                self._pending = deque(t for t in self._pending if t is not task)
                return True
            batch.killed = True
            job = batch.job
        task.future._cancel_now()
        if job is not None:
            try:
                job.kill()
            except HomieError:
                pass  # over already: its outcome will be ignored for this task
        return True

    def _run_batch(self, batch: _Batch) -> None:
        tasks_file = self._dir / f"_homie_tasks_{batch.seq}.pkl"
        info = None
        error: BaseException | None = None
        try:
            tasks_file.write_bytes(pack(batch.tasks))
            kind = "task" if len(batch.tasks) == 1 else "tasks"
            job = self.client.run(self._dir / RUNNER, [tasks_file.name, "_homie_results.pkl"],
                                  files=[*self._base_files, str(tasks_file), *self.files], directory=self.directory,
                                  peer=self.peer, gpu=self.gpu, env=self.env, timeout=self.timeout,
                                  retries=self.retries, name=f"{self.name} ({len(batch.tasks)} {kind})",
                                  cwd=self._dir)
            with self._lock:
                batch.job = job
                killed = batch.killed
            if killed:
                job.kill()
            info = self._follow(batch, job)
        except BaseException as e:  # noqa: BLE001 - every task of the batch gets it
            error = e
        finally:
            tasks_file.unlink(missing_ok=True)
        try:
            self._finish(batch, info, error)
        finally:
            with self._lock:
                self._running.pop(batch.seq, None)
                self._lock.notify_all()

    def _follow(self, batch: _Batch, job):
        from homie.client import Ended, JobEvent, OutputEvent

        partial = {1: b"", 2: b""}
        info = None
        for ev in job.stream():
            if isinstance(ev, JobEvent) and ev.kind in ("sending", "started") and ev.peer:
                batch.peer = ev.peer
            elif isinstance(ev, OutputEvent) and self.echo:
                lines = (partial[ev.stream] + ev.data).split(b"\n")
                partial[ev.stream] = lines.pop()
                self._echo(batch.peer, ev.stream, lines)
            elif isinstance(ev, Ended):
                info = ev.info
        if self.echo:
            for stream, rest in partial.items():
                if rest:
                    self._echo(batch.peer, stream, [rest])
        return info

    def _echo(self, peer: str | None, stream: int, lines: list[bytes]) -> None:
        if not lines:
            return
        out = sys.stdout if stream == 1 else sys.stderr
        text = "".join(f"[{peer or '?'}] {ln.decode('utf-8', 'replace')}\n" for ln in lines)
        with self._out_lock:
            out.write(text)
            out.flush()

    def _finish(self, batch: _Batch, info, error: BaseException | None) -> None:
        live = [t for t in batch.tasks if not t.future.done()]
        finished = error is None and info is not None and info.state == "done" and "_homie_results.pkl" in info.results
        if batch.killed and not finished:
            with self._lock:  # killed to cancel some of its tasks: the others run again
                for t in reversed(live):
                    t.batch = None
                    self._pending.appendleft(t)
                if live:
                    self._first_pending = time.monotonic() - self.batch_window
            self._forget(batch)
            return
        job_id = batch.job.id if batch.job else None
        peer = (info.peer if info else None) or batch.peer
        records = None
        if finished:
            try:
                head, records = unpack_results(Path(info.results_dir, "_homie_results.pkl").read_bytes())
            except (OSError, ValueError, EOFError) as e:
                error = RemoteError(f"the results of job {job_id} from {peer} cannot be read: {e}", peer=peer,
                                    job_id=job_id)
            else:
                peer = head.get("peer") or peer
                if head.get("fatal"):
                    fatal = head["fatal"]
                    error = PeerEnvironmentError(fatal["message"], peer=peer, job_id=job_id, module=fatal.get("module"))
                    records = None
            if self.output_dir is not None and info.results:
                from homie.client import deliver

                rest = [r for r in info.results if r != "_homie_results.pkl"]
                try:
                    deliver(rest, info.results_dir, os.fspath(self.output_dir), job_id)
                except OSError:
                    pass
        elif error is None:
            error = self._job_error(batch, info, peer, job_id)
        # (a HomieError from Client.run itself, NoDaemon, NoPeer, UsageError..., is given as it is)
        seconds = []
        if records is not None:
            by_id = {r[0]: r for r in records}
            for t in live:
                r = by_id.get(t.id)
                if r is None:
                    self._set(t, False, RemoteError(f"job {job_id} on {peer} brought no result for a task",
                                                    peer=peer, job_id=job_id))
                    continue
                ok, value = outcome(r, peer, job_id)
                seconds.append(r[-1])
                self._set(t, ok, value)
        else:
            for t in live:
                self._set(t, False, error)
        if seconds:
            avg = sum(seconds) / len(seconds)
            self._avg_seconds = avg if self._avg_seconds is None else 0.7 * self._avg_seconds + 0.3 * avg
        self._forget(batch)

    def _job_error(self, batch: _Batch, info, peer, job_id) -> BaseException:
        if info is None:
            return RemoteError(f"job {job_id}: the daemon ended the stream without an outcome", peer=peer,
                               job_id=job_id)
        if info.state != "done":
            e = error_for(f"job {job_id} {info.state}" + (f" on {peer}" if peer else "")
                          + (f": {info.message or info.reason}" if (info.message or info.reason) else ""),
                          info.exit_code)
            return RemoteError(str(e), e.exit_code, peer=peer, job_id=job_id)
        why = info.reason or (f"killed by signal {info.signal}" if info.signal else f"exit code {info.code}")
        tail = ""
        try:
            tail = batch.job.logs()[-1500:].strip() if batch.job is not None else ""
        except HomieError:
            pass
        return RemoteError(f"job {job_id} on {peer} ended without results ({why})" + (f"; its output ends:\n{tail}"
                                                                                     if tail else ""),
                           peer=peer, job_id=job_id)

    @staticmethod
    def _set(task: _Task, ok: bool, value) -> None:
        if task.future.done():
            return
        try:
            if ok:
                task.future.set_result(value)
            else:
                task.future.set_exception(value)
        except cf.InvalidStateError:
            pass
        task.fn = task.args = task.kwargs = None  # no reference kept to big arguments

    def _forget(self, batch: _Batch) -> None:
        if batch.job is not None and not self.keep_jobs:
            try:
                batch.job.forget()
            except HomieError:
                pass
