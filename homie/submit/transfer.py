"""Moving a job's files: its inputs up to the worker, its results home.
The bytes go 1 MiB at a time, so memory stays flat whatever their size."""

from __future__ import annotations

import hashlib
import os
import shutil
import time

from homie import files
from homie.errors import EXIT_TRANSFER, HomieError, ManifestError, ProtocolError
from homie.submit.attempts import Lost
from homie.submit.job import Job
from homie.wire import waitfd
from homie.wire.channel import Channel
from homie.wire.protocol import Data, Message

CHUNK = 1 << 20
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


def upload_blobs(job: Job, ch: Channel, need: list, by_sha: dict, view, quiet: dict) -> None:
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
                if job.progress is not None:
                    job.progress["done"] = sent
                chunks += 1
                if chunks % 8 == 0:
                    check_refusal(ch)


def download(job: Job, ch: Channel, save) -> None:
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
    save(job)
    ch.send("ack", job_id=job.wire_id, **_auth(job))
    ch.recv_msg("ok", "error", timeout=10)
