"""A job sent from this machine (Job), and the helpers its methods share with the CLI:
deliver() puts fetched results in place, signal_number() reads a signal's name."""

from __future__ import annotations

import os
import signal as _signal
import time

from homie.client.events import Event, OutputEvent, typed
from homie.client.records import JobInfo, JobState

TYPE_CHECKING = False  # typing costs `homie run` ~4 ms to import; annotations need it only for checkers
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from homie.client.client import Client


def deliver(results: list[str], src_dir: str, out_dir: str, job_id: str | None = None) -> list[str]:
    """Put fetched results into out_dir, each appearing whole under its final name.

    A result that would replace a different file already there (the last run's)
    sends this job's results to out_dir/<job id>/ instead: nothing is overwritten."""
    import filecmp
    import shutil

    if job_id and any(os.path.exists(os.path.join(out_dir, rel))
                      and not filecmp.cmp(os.path.join(src_dir, rel), os.path.join(out_dir, rel), shallow=False)
                      for rel in results):
        out_dir = os.path.join(out_dir, job_id)
    saved = []
    for rel in results:
        src = os.path.join(src_dir, rel)
        dst = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.homie-tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        saved.append(dst)
    return saved


def signal_number(name_or_number) -> int:
    """'KILL', 'SIGINT', 9 or '9' -> the signal's number (AttributeError/ValueError if unknown)."""
    if isinstance(name_or_number, int):
        return name_or_number
    s = str(name_or_number).upper()
    if s.isdigit():
        return int(s)
    if not s.startswith("SIG"):
        s = "SIG" + s
    return int(getattr(_signal, s))


class Job:
    """A job sent from this machine (Client.run, Client.job). Cheap: it holds the id and asks
    the daemon on each call."""

    def __init__(self, client: Client, job_id: str):
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<homie.Job {self.id}>"

    def info(self) -> JobInfo:
        """Where the job stands now."""
        return JobInfo.from_dict(self.client.request("job", job_id=self.id))

    @property
    def status(self) -> JobState | str:
        """The job's state now (JobState)."""
        return self.info().state

    def done(self) -> bool:
        """True once the job is over (done, failed, lost or killed)."""
        return self.info().terminal

    def wait(self, timeout: float | None = None) -> JobInfo:
        """Block until the job is over; return how it ended. A job that ran but failed is
        no exception here: look at info.ok, info.exit_code. TimeoutError after timeout s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        end = None
        for ev in self.client.connect().stream("follow", timeout=timeout, job_id=self.id, live=True, quiet=True):
            if getattr(ev, "t", None) == "reply":
                end = ev.body
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout:g} s")
        assert end is not None
        return JobInfo.from_dict(end)

    def stream(self, offset: int = 0, live: bool = True) -> Iterator[Event]:
        """The job's output (OutputEvent) and changes (JobEvent) as they happen, from log
        offset `offset` (0: its whole output so far first), ending with Ended once the job is
        over. live=False: only what is there now (Ended.info.terminal says if it is over)."""
        return typed(self.client.connect().stream("follow", job_id=self.id, live=live, offset=offset))

    def logs(self, stderr: bool = True) -> str:
        """The job's output so far as text (stdout and stderr interleaved as written; only
        stdout with stderr=False)."""
        chunks = [ev.data for ev in self.stream(live=False)
                  if isinstance(ev, OutputEvent) and (stderr or ev.stream == 1)]
        return b"".join(chunks).decode("utf-8", "replace")

    def results(self, dest: str | os.PathLike = "results") -> list[Path]:
        """Copy the files the job created into dest (made if missing) and return their paths.
        A file that would replace a different one already there puts this job's results
        under dest/<job id>/ instead. HomieError if the job is not done."""
        from pathlib import Path

        res = self.client.request("get_results", job_id=self.id)
        dest = os.fspath(dest)
        os.makedirs(dest, exist_ok=True)
        return [Path(p) for p in deliver(res["results"], res["results_dir"], dest, res["job_id"])]

    def kill(self, sig: int | str = "KILL") -> str:
        """Stop the job wherever it runs (KILL: SIGTERM, then SIGKILL after 2 s; INT, TERM or a
        number: just that signal). Returns the daemon's sentence about it."""
        return self.client.kill(self.id, sig)

    def forget(self) -> None:
        """Drop a finished job from the daemon (`homie clean JOB`): its kept results and log go too."""
        self.client.request("forget", job_id=self.id)
