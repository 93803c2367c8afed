"""Moving a job's files: its inputs up to the worker, its results home.
The bytes go through the transfer engine (homie.files.engine): pipelined,
with memory flat whatever their size."""

from __future__ import annotations

import os
import shutil
import time

from homie import files
from homie.errors import EXIT_TRANSFER, HomieError, ManifestError, ProtocolError
from homie.files import engine
from homie.submit.attempts import Lost
from homie.submit.job import Job
from homie.wire import waitfd
from homie.wire.channel import Channel
from homie.wire.protocol import Message

STREAM_TIMEOUT = 8.0


def _auth(job: Job) -> dict:
    return {"token": job.token} if job.token else {}


def _clear(path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def check_refusal(ch: Channel) -> None:
    """The worker speaks mid-upload only to refuse it (disk full, bad file):
    stop sending at once and say why."""
    pending = getattr(ch.sock, "pending", None)  # TLS: bytes already decrypted and buffered
    if (pending is not None and pending()) or waitfd.ready(ch.sock, 0):
        ev = ch.recv(timeout=5)
        if isinstance(ev, Message) and ev.t == "error":
            raise HomieError(ev["message"], EXIT_TRANSFER)
        raise ProtocolError("unexpected frame from the worker during the upload")


def upload_blobs(job: Job, ch: Channel, need: list, by_sha: dict, quiet: dict) -> None:
    """The blobs the worker asked for, through the transfer engine: the next
    chunks are read while this thread sends the current one. Not hashed on
    this side: the worker verifies every byte against its hash (the cache's
    integrity depends on it), and a file changed since it was hashed is
    refused there."""
    def sent(n: int) -> None:
        quiet["since"] = time.monotonic()
        if job.progress is not None:
            job.progress["done"] += n

    items = [engine.Outgoing(size=by_sha[sha].size, source=_opener(job.sources[sha]), name=by_sha[sha].path,
                             head=("blob", {"sha256": sha, "size": by_sha[sha].size})) for sha in need]
    try:
        engine.Sender(ch).send(items, progress=sent, every=(8, lambda: check_refusal(ch)))
    except engine.Shrank as e:
        name = e.item.name if e.item is not None else "a file"
        raise HomieError(f"{name} shrank while uploading; run again", EXIT_TRANSFER) from None


def _opener(path):
    return lambda: os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def download(job: Job, ch: Channel, save) -> None:
    if job.results_told == 0:
        # The worker said at exit that the job made no result file: no fetch, results and want
        # round trips (most of a tiny map input's path home), only the ack that lets it drop the job.
        _clear(job.results_dir)
        job.update(results=[])
        _ack(job, ch)
        return
    ch.send("fetch", job_id=job.wire_id, **_auth(job))
    msg = ch.recv_msg("results", "error", timeout=30)
    if msg.t == "error":
        if msg.get("code") == "unknown_job":
            raise Lost(msg["message"])
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

    def got(n: int) -> None:
        if job.progress is not None:
            job.progress["done"] += n

    try:
        with engine.Receiver(ch, timeout=STREAM_TIMEOUT) as rx:
            for entry in entries:
                head = ch.recv_msg("blob", "error", timeout=30)
                if head.t == "error":
                    raise HomieError(f"{job.peer_name}: {head['message']}", EXIT_TRANSFER)
                if head["sha256"] != entry.sha256 or head["size"] != entry.size:
                    raise ProtocolError("result file does not match its manifest")
                sink = engine.FileSink(writer.open_new(entry.path, entry.mode))
                try:
                    rx.receive(entry.size, entry.sha256, sink, progress=got, what=f"result {entry.path}")
                except (engine.CutShort, engine.TooLong) as e:
                    raise ProtocolError(str(e)) from None
                except engine.Corrupted as e:
                    raise HomieError(str(e), EXIT_TRANSFER) from None
        ch.recv_msg("results_done", timeout=30)
    except BaseException:
        # Bytes that failed their hash, or a file cut short, are not kept either:
        # otherwise a worker leaves up to a manifest's worth of junk until the job ends.
        _clear(staging)
        raise
    # Every file arrived whole: only now do they appear under their final names.
    os.rename(staging, results)
    job.progress = None
    job.update(results=[e.path for e in entries])
    save(job)
    _ack(job, ch)


def _ack(job: Job, ch: Channel) -> None:
    ch.send("ack", job_id=job.wire_id, **_auth(job))
    ch.recv_msg("ok", "error", timeout=10)
