"""The `ckpt_fetch` conversation: the worker serves a snapshot's manifest and
the chunks asked for, the submitter fetches what its store lacks. The bytes go
through the transfer engine both ways."""

from __future__ import annotations

import shutil

from homie.checkpoints.rules import CHUNK, FRAME_TIMEOUT, parse_manifest, under
from homie.checkpoints.snapshot import Snapshot, changed_message
from homie.checkpoints.store import Saved, Store
from homie.errors import HomieError, ProtocolError
from homie.files import engine


def serve(ch, job_id: str, snap: Snapshot | None) -> None:
    """The worker's side of a `ckpt_fetch`: the manifest, then the chunks asked for."""
    if snap is None:
        ch.send("error", message=f"job {job_id} has no checkpoint yet", code="no_checkpoint")
        return
    try:
        with snap:
            ch.send("ckpt", job_id=job_id, seq=snap.seq, at=snap.at, files=snap.manifest())
            want = ch.recv_msg("ckpt_want", timeout=FRAME_TIMEOUT)["chunks"]
            if len(want) > sum(len(f.chunks) for f in snap.files) or not all(
                    isinstance(s, str) and snap.has_chunk(s) for s in want):
                ch.send("error", message="asked for chunks that are not in the checkpoint", code="bad_request")
                return
            items = []
            for sha in want:
                path, fd, offset, length = snap.where(sha)
                items.append(engine.Outgoing(size=length, source=fd, offset=offset, sha256=sha, name=path,
                                             head=("blob", {"sha256": sha, "size": length})))
            # A chunk is one frame: the engine checks its hash before its header goes
            # out, so a chunk changed under us is refused, never sent.
            try:
                engine.Sender(ch).send(items)
            except (engine.Changed, engine.Shrank, OSError) as e:
                where = e.item.name if isinstance(e, engine.TransferError) and e.item is not None else "?"
                ch.send("error", message=changed_message(where) if where != "?" else str(e), code="changed")
                return
            ch.send("ckpt_done")
    except HomieError as e:
        ch.send("error", message=str(e), code="no_checkpoint")



def fetch(ch, job_id: str, auth: dict, store: Store, attempt: int) -> Saved | None:
    """The submitter's side of a `ckpt_fetch` on an open channel: None if the worker has none yet."""
    ch.send("ckpt_fetch", job_id=job_id, **auth)
    msg = ch.recv_msg("ckpt", "error", timeout=FRAME_TIMEOUT)
    if msg.t == "error":
        if msg.get("code") == "no_checkpoint":
            return None
        raise HomieError(f"checkpoint: {msg['message']}")
    new = parse_manifest(msg["files"])
    stray = [f.path for f in new if store.paths is not None and not under(f.path, store.paths)]
    if stray:  # it would replace an input of the next attempt (a module the job imports)
        raise ProtocolError(f"checkpoint: {stray[0]!r} is not under the job's checkpoint paths")
    seq, at = msg["seq"], msg["at"]
    need = store.missing(new)
    ch.send("ckpt_want", chunks=need)
    sizes: dict[str, int] = {}
    for f in new:
        for i, sha in enumerate(f.chunks):
            sizes.setdefault(sha, min(CHUNK, f.size - i * CHUNK))

    stage = store.stage(seq)
    try:
        with engine.Receiver(ch, timeout=FRAME_TIMEOUT) as rx:
            for sha in need:
                head = ch.recv_msg("blob", "error", timeout=FRAME_TIMEOUT)
                if head.t == "error":
                    raise HomieError(f"checkpoint: {head['message']}")
                if head["sha256"] != sha or head["size"] != sizes[sha]:
                    raise ProtocolError("checkpoint chunk does not match its manifest")
                sink = engine.FileSink(open(stage / "chunks" / sha, "xb"))
                try:
                    rx.receive(sizes[sha], sha, sink, what="checkpoint chunk")
                except (engine.CutShort, engine.TooLong) as e:
                    raise ProtocolError(str(e)) from None
                except engine.Corrupted:
                    raise HomieError("a checkpoint chunk arrived corrupted (hash mismatch)") from None
        ch.recv_msg("ckpt_done", timeout=FRAME_TIMEOUT)
        return store.commit(stage, seq, at, attempt, new)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
