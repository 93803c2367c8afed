"""What a task's failure on a peer looks like here (docs/api.md, "Executor": exceptions, peers that
cannot load the task, a job that failed)."""

from __future__ import annotations

from homie.errors import EXIT_FAILURE, HomieError


class RemoteError(HomieError):
    """A task could not be run on its peer: the job failed, was lost or ended without results.
    `peer` names the machine (None if the job never reached one), `job_id` the job."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None, peer: str | None = None,
                 job_id: str | None = None):
        super().__init__(message, exit_code)
        self.peer = peer
        self.job_id = job_id


class PeerEnvironmentError(RemoteError):
    """The peer's Python cannot load the task: another Python version, or a module the function
    or its arguments need is not installed there (`module` names it)."""

    def __init__(self, message: str, peer: str | None = None, job_id: str | None = None,
                 module: str | None = None):
        super().__init__(message, None, peer, job_id)
        self.module = module


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a peer, attached as the local exception's __cause__
    (as concurrent.futures.ProcessPoolExecutor does)."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class TaskError(RemoteError):
    """A task raised an exception that could not be brought home as itself (it does not pickle):
    its type name, message and the remote traceback are kept."""
