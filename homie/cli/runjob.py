"""What `homie run` does once its command line is parsed, without click: shared by
the click command (homie.cli.run) and the fast path (homie.cli.fast)."""

from __future__ import annotations

import os

from homie.cli.common import ARROW, checked_home, client, echo
from homie.cli.follow import check_out_dir, follow_stream
from homie.cli.inputs import check_args, check_inputs, parse_env, read_stdin, utf8
from homie.errors import EXIT_NO_PEER, EXIT_OK, EXIT_USAGE, EXIT_WOULD_WAIT, HomieError


def run_job(script: str, args: list[str], *, peer: str | None = None, files: tuple[str, ...] = (),
            directory: str | None = None, out_dir: str = "results", gpu: bool = False,
            env_pairs: tuple[str, ...] = (), env_file: str | None = None, timeout: float | None = None,
            label: str | None = None, quiet: bool = False, no_stdin: bool = False, executor: str | None = None,
            scheduler: str | None = None, checkpoints: tuple[str, ...] = (), retries: int | None = None,
            detach: bool = False, explain: bool = False, as_json: bool = False) -> int:
    """Check, submit and follow one job; the exit status for the shell."""
    if as_json and not (detach or explain):
        raise HomieError("--json goes with --detach or --explain (a running job's output is not JSON)", EXIT_USAGE)
    check_inputs(script, files, directory)
    check_args(list(args))
    env = parse_env(env_pairs, env_file)
    if label is not None:
        utf8("--name", label)
    if not explain and not detach:
        check_out_dir(out_dir)
    req = client(timeout=None).run_request(
        script, list(args), cwd=utf8("this directory", os.getcwd()), files=list(files), directory=directory,
        peer=peer, gpu=gpu, executor=executor, scheduler=scheduler, detach=detach, explain=explain, env=env,
        timeout=timeout, name=label, retries=retries,
        checkpoint=[utf8("--checkpoint", c) for c in checkpoints] or None)
    if explain:
        return _explain(req, as_json)
    from homie.client import Ended
    from homie.client.events import typed

    conn = client(timeout=None).connect()  # NoDaemon (69) now, before stdin is read
    req["stdin_file"] = None if no_stdin else read_stdin(checked_home())
    try:
        if detach:
            import json

            job_id = None
            for ev in typed(conn.stream("run", **req)):
                if isinstance(ev, Ended):
                    job_id = ev.info.job_id
            echo(json.dumps({"job_id": job_id}) if as_json else (job_id or ""))
            return EXIT_OK
        return follow_stream(typed(conn.stream("run", **req)), out_dir, quiet=quiet)
    finally:
        if req["stdin_file"] and os.path.exists(req["stdin_file"]):
            os.unlink(req["stdin_file"])  # the daemon did not take it: the job was refused


def _explain(req: dict, as_json: bool) -> int:
    res = client(timeout=None).request("run", **req)
    code = EXIT_OK if res["chosen"] else (EXIT_WOULD_WAIT if res.get("verdict") == "wait" else EXIT_NO_PEER)
    if as_json:
        import json

        echo(json.dumps(res, indent=2))
        return code
    for p in res["peers"]:
        mark = "eligible" if p["eligible"] else "not eligible: " + "; ".join(p["reasons"])
        who = p["name"] + (" (this machine)" if p["local"] else "")
        echo(f"{who:24} {p['ip']:16} {mark}")
    if res["chosen"]:
        echo(f"{ARROW} would run on {res['chosen']}")
    elif res.get("verdict") == "wait":
        echo(f"{ARROW} the job would wait: {res.get('why') or 'no peer is free now'}")
    else:
        echo(f"{ARROW} the job cannot run: {res.get('why') or 'no peer can take it'}")
    return code
