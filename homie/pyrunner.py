"""The script homie.futures runs on a peer: it loads a batch of pickled tasks, runs them
one after the other and writes their outcomes to a file that comes home as the job's result.

It runs with the worker's job Python, which need not have homie, nor cloudpickle: it imports
nothing of homie, only the standard library, and cloudpickle from the zip the executor ships
beside it (the same version that pickled the tasks). Unit tests import it; the executor copies
this file into the job as its script.

    python _homie_runner.py TASKS RESULTS

TASKS: one JSON line (format, python, implementation, cloudpickle version, number of tasks)
then a pickle of {"fns": {key: bytes}, "tasks": [(task id, fn key, bytes of (args, kwargs))]}:
each function is pickled once per batch and each task's arguments on their own, so one
argument that cannot be loaded fails one task, not the batch.

RESULTS: one JSON line (format, peer, python, fatal: null or {kind, message, module}) then a
pickle of [(task id, status, payload, traceback, type name, message, seconds)]; status "ok"
(payload: the pickled return value), "error" (payload: the pickled exception, or None when it
cannot be pickled) or "load" (the task could not be loaded here: message and module say why).
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import sys
import time
import traceback
from typing import Any

FORMAT = 1
CLOUDPICKLE_ZIP = "_homie_cloudpickle.zip"
RESULTS = "_homie_results.pkl"


def _header(line: bytes) -> dict:
    try:
        head = json.loads(line)
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise SystemExit(f"homie runner: {line[:60]!r} is not a homie task batch of format {FORMAT}")
    return head


def _missing_module(e: BaseException) -> str | None:
    name = getattr(e, "name", None)
    return name if isinstance(e, ImportError) and name else None


def _write(path: str, head: dict, records: list) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps(head).encode() + b"\n")
        pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


def run(tasks_path: str, results_path: str = RESULTS) -> int:
    """Run the batch in tasks_path; write results_path. Returns the exit status (0 even when
    tasks failed: their exceptions are results; 3 when the batch could not be run at all)."""
    peer = os.environ.get("HOMIE_PEER") or platform.node()
    mine = list(sys.version_info[:3])
    out: dict[str, Any] = {"format": FORMAT, "peer": peer, "python": mine, "implementation": sys.implementation.name,
           "fatal": None}
    with open(tasks_path, "rb") as f:
        head = _header(f.readline())
        body = f.read()
    theirs = head.get("python") or []
    if list(theirs[:2]) != mine[:2] or head.get("implementation") != sys.implementation.name:
        out["fatal"] = {"kind": "python", "module": None, "message": (
            f"peer {peer} runs {sys.implementation.name} {'.'.join(map(str, mine))} and the tasks were pickled"
            f" by {head.get('implementation')} {'.'.join(map(str, theirs))}: pickled functions load only on"
            f" the same Python version ({'.'.join(map(str, theirs[:2]))}); install it there and set that"
            f" peer's job_python, or choose another peer (peer=...)")}
        _write(results_path, out, [])
        print(f"homie: {out['fatal']['message']}", file=sys.stderr)
        return 3
    shipped = os.path.join(os.path.dirname(os.path.abspath(tasks_path)), CLOUDPICKLE_ZIP)
    if os.path.exists(shipped):
        sys.path.insert(0, shipped)  # the version that pickled the tasks wins over any installed one
    try:
        import cloudpickle  # noqa: F401  (pickles of functions by value refer to it)
    except ImportError as e:
        out["fatal"] = {"kind": "cloudpickle", "module": "cloudpickle",
                        "message": f"peer {peer} cannot import cloudpickle: {e}"}
        _write(results_path, out, [])
        return 3
    # Tasks see the job directory first on their import path (modules shipped with files= or directory=).
    job_dir = os.getcwd()
    if job_dir not in sys.path:
        sys.path.insert(0, job_dir)
    batch = pickle.loads(body)
    fns: dict = {}
    fn_errors: dict = {}
    for key, blob in batch["fns"].items():
        try:
            fns[key] = pickle.loads(blob)
        except BaseException as e:  # noqa: BLE001 - reported per task
            fn_errors[key] = e
    records: list[tuple] = []
    for task_id, key, blob in batch["tasks"]:
        started = time.perf_counter()
        err = fn_errors.get(key)
        if err is None:
            try:
                args, kwargs = pickle.loads(blob)
            except BaseException as e:  # noqa: BLE001
                err = e
        if err is not None:
            records.append((task_id, "load", None, "".join(traceback.format_exception(err)), type(err).__name__,
                            f"{type(err).__name__}: {err}", _missing_module(err), 0.0))
            continue
        try:
            value = fns[key](*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - the task's own exception is its result
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None))
            try:
                payload = cloudpickle.dumps(e)
                pickle.loads(payload)  # an exception that pickles but does not load back is no use at home
            except BaseException:  # noqa: BLE001
                payload = None
            records.append((task_id, "error", payload, tb, type(e).__name__, str(e), None,
                            time.perf_counter() - started))
            continue
        seconds = time.perf_counter() - started
        try:
            payload = cloudpickle.dumps(value)
        except BaseException as e:  # noqa: BLE001
            records.append((task_id, "error", None, "".join(traceback.format_exception(e)), type(e).__name__,
                            f"its return value cannot be pickled: {type(e).__name__}: {e}", None, seconds))
            continue
        records.append((task_id, "ok", payload, None, None, None, None, seconds))
    _write(results_path, out, records)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: _homie_runner.py TASKS [RESULTS]", file=sys.stderr)
        return 2
    return run(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
