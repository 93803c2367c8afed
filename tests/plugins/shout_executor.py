"""Test plugin: a third-party executor written only against homie.api, the public
plugin API (`homie run --executor shout`). It reads a job file in prepare(),
streams a line, can fail the job, and passes variables to the job."""

import dataclasses

from homie.api import STDERR, ExecutorContext, HomieError, Job, hookimpl, script_argv


class ShoutExecutor:
    name = "shout"
    priority = -300  # never chosen by "auto"

    def __init__(self, ctx: ExecutorContext):
        self.ctx = ctx

    def wants(self, job: Job) -> bool:
        return False

    def prepare(self, job: Job, emit) -> None:
        with job.open(job.script) as f:
            size = len(f.read())
        try:
            job.script = "other.py"  # the job is read-only: an executor answers with return values
            frozen = "no"
        except dataclasses.FrozenInstanceError:
            frozen = "yes"
        emit(STDERR, f"shout: {job.script} is {size} bytes, {len(job.files)} file(s), frozen {frozen}\n".encode())
        if "fail" in job.args:
            raise HomieError("shout refuses to run this job")

    def command(self, job: Job):
        env = {"SHOUT": job.submitter.upper(), "SHOUT_DIR": self.ctx.job_path(job)}
        return script_argv(job, self.ctx.python), env


@hookimpl
def homie_executors():
    return [ShoutExecutor]
