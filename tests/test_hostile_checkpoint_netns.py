"""Hostile self-checkpointing jobs (and a hostile worker sending checkpoints home).

A job's checkpoint files are read by the worker's daemon (root, or the
owner's uid) while the job runs, after it is evicted (SIGTERM, grace,
SIGKILL, final checkpoint) and sent home to the submitter, who stores them
and restores them into the next attempt's directory. Each attack below
really tries its action against real daemons with the real CLI and asserts
the defence: a marker written where the job must not read it never reaches
the submitter, the daemon stays up and answers, other jobs' checkpoints keep
coming, and the job gets a clear line, never a traceback.

A malicious *worker* cannot be a real daemon here (it would need a patched
homie); its half of `ckpt_fetch` is played over a socket pair against the
submitter's real `checkpoints.fetch` (the first tests, no namespaces).
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from homie import checkpoints
from homie.errors import HomieError
from homie.wire import protocol
from homie.wire.channel import Channel, Conversation

CHUNK = checkpoints.CHUNK


# ----------------------------------------------------------------------------- a malicious worker


def _pair():
    a, b = socket.socketpair()
    server = Channel(a, Conversation(protocol.SERVER))
    client = Channel(b, Conversation(protocol.CLIENT))
    server.send("hello", name="w", proto=1, homie="x", python="3")
    client.recv_msg("hello")
    return server, client


def _evil_worker(server: Channel, files: list[dict], blobs: dict[str, bytes]) -> None:
    """Answer one ckpt_fetch with `files` as the manifest and send whatever chunk is asked for."""
    try:
        server.recv_msg("ckpt_fetch")
        server.send("ckpt", job_id="j1", seq=1, at=1.0, files=files)
        want = server.recv_msg("ckpt_want")["chunks"]
        for sha in want:
            data = blobs.get(sha, b"pwned by the worker\n")
            server.send("blob", sha256=sha, size=len(data))
            server.send_data(data)
        server.send("ckpt_done")
    except Exception:
        pass  # the submitter hung up on us: what it should do


def _fetch_from_evil(tmp_path: Path, files: list[dict], blobs: dict[str, bytes]):
    # the submitter's store of a job run with no --checkpoint beyond checkpoint/ (as homie.submit.job makes it)
    store = checkpoints.Store(tmp_path / "home" / "jobs" / "j1" / "checkpoint", ["checkpoint"])
    server, client = _pair()
    t = threading.Thread(target=_evil_worker, args=(server, files, blobs), daemon=True)
    t.start()
    try:
        return store, checkpoints.fetch(client, "j1", {}, store, 1)
    finally:
        client.close()
        t.join(5)
        server.close()


def _padded(path: str) -> str:
    """`path` written as exactly 64 characters (what a chunk name is checked for), with ./ padding."""
    head, name = os.path.split(path)
    pad = 64 - len(path)
    assert pad >= 0 and pad % 2 == 0, path
    return f"{head}{'/.' * (pad // 2)}/{name}"


def test_a_worker_cannot_make_the_submitter_write_outside_its_store_with_chunk_names(tmp_path):
    """Chunk names come from the worker: an absolute or ../ one of 64 characters
    must not become a file written (as the submitter's user) outside its store."""
    outside = Path(tempfile.mkdtemp(prefix="ck-", dir="/tmp"))
    try:
        data = b"pwned by the worker\n"
        absolute = _padded(str(outside / "abs"))
        # ../ from <store>/incoming-1/chunks/ up to tmp_path, then into `rel`
        depth = len(("home", "jobs", "j1", "checkpoint", "incoming-1", "chunks"))
        (tmp_path / "rel").mkdir()
        prefix = "../" * depth + "rel/"
        relative = prefix + "x" * (64 - len(prefix))
        for name, where in ((absolute, outside / "abs"), (relative, tmp_path / "rel" / relative.rsplit("/", 1)[1])):
            assert len(name) == 64, name
            entry = {"path": "checkpoint/state", "mode": 0o644, "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest(), "chunks": [name]}
            with pytest.raises(HomieError) as e:
                _fetch_from_evil(tmp_path, [entry], {name: data})
            assert "Traceback" not in str(e.value)
            assert not where.exists(), f"a worker wrote {where} on the submitter (chunk name {name!r})"
    finally:
        for p in sorted(outside.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        outside.rmdir()


def test_a_worker_cannot_slip_files_outside_the_checkpoint_paths_into_the_next_attempt(tmp_path):
    """What a worker sends home as a checkpoint is restored over the job's inputs at
    the next attempt (on another friend's machine): only the declared checkpoint
    paths may come back, not a module the job imports."""
    data = b"import os; os.system('echo owned')\n"
    sha = hashlib.sha256(data).hexdigest()
    entry = {"path": "helper.py", "mode": 0o644, "size": len(data), "sha256": sha, "chunks": [sha]}
    ok = {"path": "checkpoint/state", "mode": 0o644, "size": len(data), "sha256": sha, "chunks": [sha]}
    try:
        store, saved = _fetch_from_evil(tmp_path, [ok, entry], {sha: data})
    except HomieError:
        return  # refused outright: fine
    assert "helper.py" not in {e.path for e, _ in store.entries()}, \
        "a worker's checkpoint replaced an input (helper.py) of the next attempt"
