"""What a batch job carries and brings home: the runner's batch file of cloudpickled tasks,
cloudpickle's own source for the peer, and each task's result record.

The other end is homie/pyrunner.py, which runs on the peer with the standard library only.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

from homie.errors import HomieError
from homie.futures.errors import PeerEnvironmentError, RemoteTraceback, TaskError
from homie.futures.tasks import _Task

RUNNER = "_homie_runner.py"


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - a runtime dependency
        raise HomieError("homie.futures needs cloudpickle (pip install cloudpickle)") from None
    return cloudpickle


def _cloudpickle_zip(path: Path) -> None:
    """cloudpickle's own source as a zip the runner imports from: the peer's Python needs no
    cloudpickle of its own, and loads the tasks with the version that pickled them. Written
    byte for byte the same each time, so a peer's blob cache sends it once."""
    cp = _cloudpickle()
    root = Path(cp.__file__).parent
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(root.rglob("*.py")):
            info = zipfile.ZipInfo(f"cloudpickle/{f.relative_to(root).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, f.read_bytes())


def pack(tasks: list[_Task]) -> bytes:
    """A batch file for homie.pyrunner: a JSON line, then the pickled functions and arguments."""
    cloudpickle = _cloudpickle()
    fns: dict[str, bytes] = {}
    keys: dict[int, str] = {}
    rows = []
    for t in tasks:
        key = keys.get(id(t.fn))
        if key is None:
            key = keys[id(t.fn)] = f"f{len(keys)}"
            fns[key] = cloudpickle.dumps(t.fn)
        rows.append((t.id, key, cloudpickle.dumps((t.args, t.kwargs))))
    head = {"format": 1, "python": list(sys.version_info[:3]), "implementation": sys.implementation.name,
            "cloudpickle": cloudpickle.__version__, "tasks": len(tasks)}
    import pickle

    return json.dumps(head).encode() + b"\n" + pickle.dumps({"fns": fns, "tasks": rows}, protocol=4)


def unpack_results(data: bytes) -> tuple[dict, list]:
    """(header, records) of a runner's results file."""
    import pickle

    line, _, body = data.partition(b"\n")
    head = json.loads(line)
    return head, (pickle.loads(body) if body else [])


def outcome(record, peer: str | None, job_id: str | None):
    """(ok, value or exception) of one result record, the exception carrying the remote traceback."""
    import pickle

    _task_id, status, payload, tb, type_name, message, module, _seconds = record
    if status == "ok":
        return True, pickle.loads(payload)
    where = f"peer {peer}" if peer else "the peer"
    if status == "load":
        if module:
            return False, PeerEnvironmentError(
                f"{where} cannot load the task: {message} (install {module!r} there, or ship it: files=, directory=,"
                f" pickle_by_value=[module], requirements=)", peer=peer, job_id=job_id, module=module)
        return False, PeerEnvironmentError(f"{where} cannot load the task: {message}", peer=peer, job_id=job_id)
    exc = None
    if payload is not None:
        try:
            exc = pickle.loads(payload)
        except Exception:  # noqa: BLE001
            exc = None
    if not isinstance(exc, BaseException):
        exc = TaskError(f"{type_name} on {where}: {message}", peer=peer, job_id=job_id)
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    if hasattr(exc, "add_note"):
        exc.add_note(f"(raised on {where}, homie job {job_id})")
    return False, exc
