"""Following a job: its events and output as they arrive, Ctrl-C, and the results it brings home.

`homie run`, `restart` and `attach` follow a job here (homie.client's typed events);
`results` and `map` deliver results with homie.client.deliver().
"""

from __future__ import annotations

import os
import sys

from homie.cli.common import ARROW, client, echo, say, size
from homie.client import Ended, JobEvent, OutputEvent, deliver  # noqa: F401  (deliver: for jobs, map)
from homie.errors import EXIT_FAILURE, EXIT_INTERNAL, EXIT_NO_DAEMON, EXIT_TRANSFER, EXIT_USAGE, HomieError


class _Printer:
    """Job output: each line prefixed with the peer's name, or raw (--quiet); stdout and stderr stay apart."""

    def __init__(self, tag: str | None):
        self.tag = tag
        self.partial = {1: b"", 2: b""}

    def feed(self, stream: int, data: bytes) -> None:
        out = sys.stdout if stream == 1 else sys.stderr
        if self.tag is None:
            out.buffer.write(data)
            out.flush()
            return
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        self.partial[stream] = lines.pop()
        if lines:
            prefix = f"[{self.tag}] ".encode()
            out.buffer.write(b"".join(prefix + ln + b"\n" for ln in lines))
            out.flush()

    def flush(self) -> None:
        for stream in (1, 2):
            if self.partial[stream]:
                self.feed(stream, b"\n")


def check_out_dir(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise HomieError(f"cannot create the results directory {out_dir}: {e.strerror}", EXIT_USAGE) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise HomieError(f"the results directory {out_dir} is not writable", EXIT_USAGE)


class _Progress:
    """A rich progress bar for big transfers, only on a terminal; gone once the job starts."""

    THRESHOLD = 4 << 20

    def __init__(self):
        self.bar = None
        self.task = None
        self.phase = None

    def update(self, ev) -> None:
        if not sys.stderr.isatty() or ev.total < self.THRESHOLD:
            return
        if self.phase != ev.phase:
            self.close()
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            # Decimal units, like the "sending" line (common.size): the two never disagree.
            self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), transient=True, console=Console(stderr=True))
            self.bar.start()
            self.task = self.bar.add_task(ev.phase, total=ev.total)
            self.phase = ev.phase
        assert self.bar is not None  # opened above for this phase
        self.bar.update(self.task, completed=ev.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            self.phase = None


def follow_stream(events, out_dir: str | None, quiet: bool = False, tag: str | None = None,
                   attached: str | None = None) -> int:
    """Print a job's events and output (homie.client's typed events); return the exit code for the shell.

    attached: the job id when following an existing job (attach): its past
    events are told as what happened, not as if they happened again, and
    Ctrl-C detaches instead of interrupting the job."""
    printer = None
    progress = _Progress()
    state = {"interrupts": 0, "job_id": attached, "detach": attached is not None}
    _install_interrupt(state)
    tell = (lambda text: None) if quiet else say
    for ev in events:
        if isinstance(ev, OutputEvent):
            if printer is None:
                printer = _Printer(None if quiet else (tag or "?"))
            printer.feed(ev.stream, ev.data)
            continue
        if isinstance(ev, Ended):
            progress.close()
            if printer:
                printer.flush()
            return _finish_run(ev.info, out_dir, quiet)
        if not isinstance(ev, JobEvent):
            continue
        kind = ev.kind
        if kind == "job":
            state["job_id"] = ev.job_id
        elif kind == "queued":
            tell(f"queued: {ev.why}")
        elif kind == "sending":
            nbytes = ev.bytes or 0
            big = nbytes >= 10 << 20 or (ev.files or 0) > 20
            extra = f" ({ev.files} files, {size(nbytes)})" if big else ""
            if attached:
                tell(f"job {attached} was sent to {ev.peer} ({ev.via}){extra}")
            else:
                tell(f"sending to {ev.peer} ({ev.via}){extra}")
            printer = _Printer(None if quiet else (tag or ev.peer))
        elif kind == "resumed":
            import time

            at = ev.checkpoint_at
            where = (f"from the checkpoint of {time.strftime('%H:%M:%S', time.localtime(at))}" if at
                     else "from the beginning")
            tell(f"resumed on {ev.peer} {where} (attempt {ev.attempt})")
        elif kind == "started":
            progress.close()  # the upload is over: no bar frozen at its last value while the job runs
            if printer is None or (not quiet and printer.tag != (tag or ev.peer)):
                printer = _Printer(None if quiet else (tag or ev.peer))
            if not attached:
                tell(f"job started: {ev.job_id}")
        elif kind == "progress":
            progress.update(ev)
    return EXIT_NO_DAEMON


def _finish_run(end, out_dir: str | None, quiet: bool) -> int:
    """end: the JobInfo the stream ended with."""
    state = end.state
    code = end.exit_code
    if state == "done":
        sig = end.signal
        if end.reason:
            say(f"job {end.reason}")
        elif sig:
            say(f"job killed by signal {sig}")
        elif end.code:
            say(f"job failed with exit code {end.code}")
        elif not quiet:
            say("job complete")
        if end.results and out_dir is not None:
            try:
                saved = deliver(end.results, end.results_dir, out_dir, end.job_id)
            except OSError as e:
                echo(f"error: cannot save results into {out_dir}: {e.strerror or e}", err=True)
                return EXIT_TRANSFER
            if not quiet:
                for p in saved:
                    say(f"saved: {os.path.relpath(p)}")
        return code if code is not None else EXIT_INTERNAL
    if not end.terminal:
        return 0
    say(f"job {getattr(state, 'value', state)}: {end.message or end.reason or ''}".rstrip(": "))
    return code if code is not None else EXIT_FAILURE


def _install_interrupt(state: dict) -> None:
    """Ctrl-C: the first interrupts the remote job, a second kills it; when
    attached to an existing job, Ctrl-C only detaches (the job goes on)."""
    import signal

    def send(sig):
        try:
            client().kill(state["job_id"], int(sig))
        except HomieError as e:
            say(str(e))

    def handler(signum, frame):
        state["interrupts"] += 1
        job = state["job_id"]
        if not job:
            echo(f"\n{ARROW} interrupted before the job was queued: nothing runs", err=True)
            os._exit(130)
        n = state["interrupts"]
        if state.get("detach") or n > 2:
            echo(f"\n{ARROW} detached; job {job} goes on (homie attach {job} follows it,"
                       f" homie kill {job} stops it)", err=True)
            os._exit(130)
        import threading  # here, not above: `homie run` would pay for it on every job

        if n == 1:
            echo(f"\n{ARROW} interrupting job {job} (Ctrl-C again to kill it)", err=True)
            threading.Thread(target=send, args=(signal.SIGINT,), daemon=True).start()
        else:
            echo(f"\n{ARROW} killing job {job}", err=True)
            threading.Thread(target=send, args=(signal.SIGKILL,), daemon=True).start()

    signal.signal(signal.SIGINT, handler)
