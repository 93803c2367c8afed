"""A group member's own client: it holds the group key, so it can speak the job
protocol directly instead of through `homie run` (choosing the job id, the
submitter name it claims, when it uploads). Run inside the member's namespace
with the homie package importable.

usage: rogue_submit.py KEYFILE NAME IP PORT JOB_ID PROJDIR SCRIPT [ARG...]
env ROGUE_ATTACH=1: submit nothing; attach to JOB_ID (someone else's job),
then fetch and ack it (PROJDIR and SCRIPT are ignored).
ROGUE_HOLD: seconds to wait after the worker's "need" before uploading;
ROGUE_FETCH=1: fetch the results after the exit, keeping the bytes as sent
(no hash check: a member's client need not make one); ROGUE_DEADLINE: give up
after this many seconds (default 90).
Prints one JSON line: reply (need/refuse/error), message, exit (the worker's
exit message or null), stdout, stderr, results {path: text}, error.
"""
import hashlib
import json
import os
import socket
import sys
import time

from homie.keys import load_key
from homie.wire import protocol
from homie.wire.channel import Channel
from homie.wire.protocol import Conversation, Message, Output
from homie.wire.trust import SERVER_HOSTNAME, Trust

keyfile, name, ip, port, job_id, projdir, script, *args = sys.argv[1:]
res = {"job_id": job_id, "reply": None, "message": None, "exit": None, "stdout": "", "stderr": "", "results": None,
       "error": None}
deadline = time.monotonic() + float(os.environ.get("ROGUE_DEADLINE", "90"))


def manifest(root):
    entries, paths = [], {}
    for d, dirs, fnames in os.walk(root):
        dirs.sort()
        for f in sorted(fnames):
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                data = fh.read()
            sha = hashlib.sha256(data).hexdigest()
            entries.append({"path": os.path.relpath(p, root), "mode": 0o644, "size": len(data), "sha256": sha})
            paths[sha] = p
    return entries, paths


try:
    entries, paths = manifest(projdir)
    sizes = {e["sha256"]: e["size"] for e in entries}
    ctx = Trust(load_key(keyfile), name).client_context()  # before connecting: the worker allows 2 s to shake hands
    raw = socket.create_connection((ip, int(port)), timeout=15)
    tls = ctx.wrap_socket(raw, server_hostname=SERVER_HOSTNAME)
    ch = Channel(tls, Conversation(protocol.CLIENT))
    ch.recv_msg("hello", timeout=15)
    attach = os.environ.get("ROGUE_ATTACH") == "1"
    if attach:
        ch.send("attach", job_id=job_id, offset=0)
        reply = Message("need", {"hashes": []})
    else:
        ch.send("submit", job_id=job_id, script=script, args=args, files=entries, submitter=name,
                executor="auto", gpu=False)
        reply = ch.recv_msg("need", "refuse", "error", timeout=60)
    res["reply"] = reply.t
    res["message"] = reply.get("message") or reply.get("reason")
    if reply.t == "need":
        time.sleep(float(os.environ.get("ROGUE_HOLD", "0")))
        if not attach:
            for sha in reply["hashes"]:
                ch.send("blob", sha256=sha, size=sizes[sha])
                with open(paths[sha], "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        ch.send_data(chunk)
            ch.send("upload_done")
        out, err = [], []
        while True:
            if time.monotonic() > deadline:
                res["error"] = "deadline: no exit from the worker"
                break
            ev = ch.recv(timeout=30)
            if isinstance(ev, Output):
                (out if ev.stream == protocol.STDOUT else err).append(bytes(ev.data))
            elif isinstance(ev, Message):
                if ev.t == "exit":
                    res["exit"] = dict(ev.body)
                    break
                if ev.t == "error":
                    res["error"] = ev.get("message")
                    break
        res["stdout"] = b"".join(out).decode(errors="replace")
        res["stderr"] = b"".join(err).decode(errors="replace")
        if (attach or os.environ.get("ROGUE_FETCH") == "1") and res["exit"]:
            ch.send("fetch", job_id=job_id)
            msg = ch.recv_msg("results", "error", timeout=30)
            if msg.t == "error":
                res["error"] = msg["message"]
            else:
                res["results"] = {}
                ch.send("want", paths=[f["path"] for f in msg["files"]])
                for f in msg["files"]:
                    head = ch.recv_msg("blob", "error", timeout=30)
                    if head.t == "error":
                        res["error"] = head["message"]
                        break
                    got = b""
                    while len(got) < head["size"]:
                        got += bytes(ch.recv(timeout=30).data)
                    res["results"][f["path"]] = got.decode(errors="replace")
                else:
                    ch.recv_msg("results_done", timeout=30)
        if attach and res["exit"]:
            ch.send("ack", job_id=job_id)
            res["acked"] = ch.recv_msg("ok", "error", timeout=30).t
except Exception as e:  # noqa: BLE001 - reported to the test
    res["error"] = res["error"] or f"{type(e).__name__}: {e}"
print(json.dumps(res), flush=True)
