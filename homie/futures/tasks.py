"""A task, the batch (one homie job) it travels in, and its Future.

The executor keeps these under its lock; cancel() on a running future reaches the
executor, which kills the task's job (the other tasks of that job run again).
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homie.futures.executor import Executor


class _Future(cf.Future):
    """A Future whose cancel() also stops a task already running on a peer (its job is killed;
    the other tasks of that job are run again)."""

    def __init__(self, executor: Executor, task: _Task):
        super().__init__()
        self._homie = (executor, task)

    def cancel(self) -> bool:
        executor, task = self._homie
        with self._condition:
            if self._state == cf._base.FINISHED:
                return False
            if self._state in (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED):
                return True
            if self._state == cf._base.PENDING:
                self._state = cf._base.CANCELLED
                self._condition.notify_all()
                cancelled_pending = True
            else:
                cancelled_pending = False
        if cancelled_pending:
            self._invoke_callbacks()  # type: ignore[attr-defined]
            executor._wake()
            return True
        return executor._cancel_running(task)

    def _cancel_now(self) -> None:
        """A running future becomes cancelled, and everyone waiting on it hears so."""
        with self._condition:
            if self._state != cf._base.RUNNING:
                return
            self._state = cf._base.CANCELLED_AND_NOTIFIED
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]


class _Task:
    __slots__ = ("id", "fn", "args", "kwargs", "future", "chunk", "batch", "tries")

    def __init__(self, task_id: int, fn, args, kwargs, future=None, chunk: int | None = None):
        self.id = task_id
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.chunk = chunk
        self.batch: _Batch | None = None
        self.tries = 0


class _Batch:
    def __init__(self, seq: int, tasks: list[_Task]):
        self.seq = seq
        self.tasks = tasks
        self.job: Any = None  # the homie.client.Job, once queued
        self.killed = False  # killed here for a cancel(): the others run again
        self.peer: str | None = None


def _notify_cancelled(f: cf.Future) -> None:
    """A future cancelled before it ran: tell its waiters (as_completed, wait) once."""
    if f._state == cf._base.CANCELLED:
        f.set_running_or_notify_cancel()
