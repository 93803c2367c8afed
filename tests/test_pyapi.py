"""homie from Python, without a daemon: the task batch format, the runner (run as a real
process, as a peer runs it), error propagation with the remote traceback, the typed API
objects, and the import cost of `homie` and `homie.cli`. The namespace tests drive the
same code against real daemons (tests/test_pyapi_netns.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from homie import futures
from homie.client import Ended, JobEvent, JobInfo, JobState, OutputEvent, Peer
from homie.client.events import typed
from homie.errors import EXIT_NO_PEER, EXIT_PEER_LOST, NoPeer, PeerLost, error_for
from homie.futures import pickling
from homie.futures.tasks import _Task

REPO = Path(__file__).resolve().parent.parent


class Boom(ValueError):
    pass


def _batch(tmp_path: Path, calls) -> Path:
    tasks = [_Task(i, fn, args, kwargs) for i, (fn, args, kwargs) in enumerate(calls, 1)]
    shutil.copyfile(REPO / "homie" / "pyrunner.py", tmp_path / pickling.RUNNER)
    pickling._cloudpickle_zip(tmp_path / "_homie_cloudpickle.zip")
    (tmp_path / "tasks.pkl").write_bytes(pickling.pack(tasks))
    return tmp_path / "tasks.pkl"




def _run_runner(tmp_path: Path, env: dict | None = None) -> tuple[dict, list, subprocess.CompletedProcess]:
    # -I -S: isolated, no site-packages: the peer's Python has no cloudpickle of its own,
    # the runner must use the zip shipped beside it
    cp = subprocess.run([sys.executable, "-I", "-S", pickling.RUNNER, "tasks.pkl", "out.pkl"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=60,
                        env={"PATH": os.environ.get("PATH", ""), "HOMIE_PEER": "raj", **(env or {})})
    head, records = pickling.unpack_results((tmp_path / "out.pkl").read_bytes())
    return head, records, cp


def test_runner_runs_closures_lambdas_and_kwargs_without_cloudpickle_installed(tmp_path):
    k = 10

    def add_k(x, y=0):
        return x + y + k

    _batch(tmp_path, [(add_k, (1,), {"y": 2}), (lambda s: s.upper(), ("abc",), {}), (add_k, (5,), {}),
                      (sorted, ([3, 1, 2],), {})])
    head, records, cp = _run_runner(tmp_path)
    assert cp.returncode == 0, cp.stderr
    assert head["peer"] == "raj" and head["fatal"] is None
    got = [pickling.outcome(r, "raj", "j1") for r in records]
    assert got == [(True, 13), (True, "ABC"), (True, 15), (True, [1, 2, 3])]
    # one function used twice is pickled once
    raw = (tmp_path / "tasks.pkl").read_bytes()
    import pickle

    body = pickle.loads(raw.partition(b"\n")[2])
    assert len(body["fns"]) == 3 and len(body["tasks"]) == 4


def _fails_deep(n):
    def inner():
        raise Boom(f"bad input {n}")
    return inner()


def test_exception_comes_home_with_its_type_and_the_remote_traceback(tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        _batch(tmp_path, [(_fails_deep, (7,), {}), (lambda: 1 / 0, (), {}), (lambda: 42, (), {})])
        head, records, cp = _run_runner(tmp_path)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert cp.returncode == 0, cp.stderr
    (ok1, e1), (ok2, e2), (ok3, v3) = [pickling.outcome(r, "raj", "j1") for r in records]
    assert not ok1 and type(e1).__name__ == "Boom" and str(e1) == "bad input 7"
    assert isinstance(e1.__cause__, futures.RemoteTraceback)
    tb = str(e1.__cause__)
    # functions that travelled by value have no source file on the peer: names and line numbers
    assert "in _fails_deep" in tb and "in inner" in tb and "test_pyapi.Boom: bad input 7" in tb
    if sys.version_info >= (3, 11):
        assert any("raised on peer raj" in n for n in e1.__notes__)
    assert not ok2 and isinstance(e2, ZeroDivisionError) and "in <lambda>" in str(e2.__cause__)
    assert ok3 and v3 == 42


def test_a_function_of_a_module_the_peer_lacks_is_an_error_naming_peer_and_module(tmp_path):
    # _fails_deep pickles by reference (module test_pyapi), which the runner cannot import
    _batch(tmp_path, [(_fails_deep, (1,), {}), (len, ("ab",), {})])
    head, records, cp = _run_runner(tmp_path)
    (ok1, e1), (ok2, v2) = [pickling.outcome(r, "raj", "j9") for r in records]
    assert not ok1 and isinstance(e1, futures.PeerEnvironmentError)
    assert e1.peer == "raj" and e1.module == "test_pyapi" and e1.job_id == "j9"
    assert "peer raj cannot load the task" in str(e1) and "test_pyapi" in str(e1)
    assert ok2 and v2 == 2  # the other task of the batch is unharmed


def test_another_python_version_is_refused_before_anything_is_unpickled(tmp_path):
    path = _batch(tmp_path, [(len, ("ab",), {})])
    line, _, rest = path.read_bytes().partition(b"\n")
    head = json.loads(line)
    head["python"] = [3, 99, 0]
    path.write_bytes(json.dumps(head).encode() + b"\n" + rest)
    out, records, cp = _run_runner(tmp_path)
    assert cp.returncode == 3
    assert out["fatal"]["kind"] == "python" and records == []
    msg = out["fatal"]["message"]
    assert msg.startswith("peer raj runs cpython 3.") and "3.99" in msg and "job_python" in msg


def test_an_unpicklable_exception_or_result_is_reported_not_lost(tmp_path):
    import threading

    class Weird(Exception):
        def __init__(self, a, b):
            super().__init__(a)
            self.lock = threading.Lock()

    def raises_weird():
        raise Weird("odd", 2)

    _batch(tmp_path, [(raises_weird, (), {}), (lambda: threading.Lock(), (), {})])
    head, records, cp = _run_runner(tmp_path)
    (ok1, e1), (ok2, e2) = [pickling.outcome(r, "raj", "j2") for r in records]
    assert not ok1 and isinstance(e1, futures.TaskError) and "Weird on peer raj: odd" in str(e1)
    assert "raises_weird" in str(e1.__cause__)
    assert not ok2 and "return value cannot be pickled" in str(e2)


def test_cloudpickle_zip_is_the_same_bytes_each_time(tmp_path):
    pickling._cloudpickle_zip(tmp_path / "a.zip")
    pickling._cloudpickle_zip(tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert "cloudpickle/__init__.py" in zipfile.ZipFile(tmp_path / "a.zip").namelist()


def test_typed_events_and_infos():
    from homie.wire import protocol

    raw = [protocol.Message("event", {"kind": "job", "job_id": "abc"}),
           protocol.Message("event", {"kind": "sending", "job_id": "abc", "peer": "raj", "via": "best available",
                                      "files": 2, "bytes": 10, "extra": 1}),
           protocol.Output(1, 6, b"hello\n"),
           protocol.Message("reply", {"job_id": "abc", "state": "done", "exit_code": 0, "code": 0, "signal": None,
                                      "reason": None, "message": None, "peer": "raj", "results": ["m.pt"],
                                      "results_dir": "/x", "offset": 6, "terminal": True})]
    evs = list(typed(raw))
    assert evs[0] == JobEvent(kind="job", job_id="abc")
    assert evs[1].peer == "raj" and evs[1].files == 2
    assert evs[2] == OutputEvent(1, b"hello\n", 6) and evs[2].text == "hello\n" and not evs[2].is_stderr
    assert isinstance(evs[3], Ended) and evs[3].info.ok and evs[3].info.state is JobState.DONE
    assert evs[3].info.results == ["m.pt"]
    ps = JobInfo.from_dict({"job_id": "x", "status": "queued", "why": "every peer is busy", "results": 0})
    assert ps.state is JobState.QUEUED and not ps.terminal and ps.results == []
    assert JobInfo.from_dict({"job_id": "y", "status": "lost"}).terminal
    assert f"{JobState.LOST}" == "lost" and str(JobState.KILLED) == "killed"
    assert [s.value for s in JobState] == ["queued", "uploading", "running", "fetching", "done", "failed", "lost",
                                           "killed"]
    p = Peer.from_dict({"name": "raj", "ip": "10.0.0.2", "port": 1, "max_jobs": 4, "brand_new_field": 1})
    assert p.name == "raj" and p.max_jobs == 4 and not p.local


def test_daemon_refusals_become_exceptions_with_their_exit_codes():
    e = error_for("unknown peer 'x'", EXIT_NO_PEER)
    assert isinstance(e, NoPeer) and e.exit_code == 70
    assert isinstance(error_for("gone", EXIT_PEER_LOST), PeerLost)
    assert type(error_for("no job 'q'", 1)).__name__ == "HomieError"


def test_no_daemon_is_NoDaemon(tmp_path):
    import homie

    home = tmp_path / "h"
    home.mkdir(mode=0o700)
    with pytest.raises(homie.NoDaemon) as e:
        homie.Client(home).peers()
    assert e.value.exit_code == 69 and "homie up" in str(e.value)


def test_import_homie_and_the_cli_stay_light():
    code = ("import sys, homie; a = set(sys.modules); import homie.cli; b = set(sys.modules);"
            "print(sorted(m for m in ('cryptography', 'psutil', 'yaml', 'cloudpickle', 'homie.client') if m in a),"
            " sorted(m for m in ('cryptography', 'psutil', 'yaml', 'cloudpickle') if m in b))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] []"
