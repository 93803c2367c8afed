"""homie from Python on namespaced hosts (issue 14): homie.Client, homie.futures.Executor and
the joblib backend with scikit-learn, against real daemons, sandboxed jobs and real peers.

The test process is the user's Python program: it talks to you's daemon through its control
socket (a path, reachable from any network namespace). raj lends with its default job
Python (the system python3: no cloudpickle, no scikit-learn); mike and you with a job Python
that sees this venv's packages (job_python: a venv of the system python3 whose .pth points
at this venv's site-packages, shared read-only with the sandbox), as an owner who wants to
offer scikit-learn would set it up.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

import homie
from homie.client import Ended, JobEvent, JobState, OutputEvent

from jobhelp import GATES, gate_path, make_group, marker, processes, project
from netns import Cluster, wait_until

pytestmark = pytest.mark.netns

THIS = sys.modules[__name__]


def _job_python() -> tuple[str | None, str]:
    """(interpreter, why not): a venv of the system python3 seeing this venv's site-packages."""
    from homie.worker.jobdir import passable_by_others

    system = shutil.which("python3", path="/usr/bin:/bin:/usr/local/bin")
    if not system:
        return None, "no system python3"
    ver = subprocess.run([system, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True,
                         text=True).stdout.split()
    if ver != [str(sys.version_info[0]), str(sys.version_info[1])]:
        return None, f"the system python3 is {'.'.join(ver)}, the tests' {sys.version_info[0]}.{sys.version_info[1]}"
    site = sysconfig.get_paths()["purelib"]
    if not passable_by_others(site):
        return None, f"{site} is not reachable by job uids"
    venv = Path(f"/tmp/homie-jobpy-{hashlib.sha256(site.encode()).hexdigest()[:10]}")
    if not (venv / "bin" / "python").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([system, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
        own_site = subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        Path(own_site, "homie-tests.pth").write_text(site + "\n")
        for root, _dirs, _files in os.walk(venv):
            os.chmod(root, 0o755)
    return str(venv / "bin" / "python"), str(site)


@pytest.fixture(scope="module")
def lan():
    py, site = _job_python()
    offer = {"job_python": py, "sandbox_ro_paths": f"[{GATES}, {Path(py).parent.parent}, {site}]"} if py else {}
    GATES.mkdir(mode=0o755, exist_ok=True)
    with Cluster() as c:
        raj, mike, you = make_group(c, ["raj", "mike", "you"], per_host={"mike": offer, "you": offer})
        c.job_python_missing = None if py else site
        yield c, raj, mike, you, homie.Client(you.home)


def where(i):
    return os.environ.get("HOMIE_PEER"), i * i


def fails(n):
    if n == 3:
        raise KeyError(f"no item {n}")
    return n


def wait_for(path, value):
    deadline = time.time() + 60
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    return value


def by_reference(x):
    return x + 1


def test_client_run_stream_wait_results_kill(lan):
    c, raj, mike, you, client = lan
    assert {p.name for p in client.peers()} == {"raj", "mike"}
    assert [p.name for p in client.peers(include_self=True) if p.local] == ["you"]
    proj = project(you, {"job.py": """
        import os, sys, time
        n = int(sys.argv[1])
        for i in range(n):
            print(f"line {i} {open('data.txt').read().strip()} {os.environ['COLOUR']}", flush=True)
            print(f"err {i}", file=sys.stderr, flush=True)
        open("out.txt", "w").write(f"{n} lines on {os.environ['HOMIE_PEER']}\\n")
    """, "data.txt": "payload\n"})
    job = client.run(proj / "job.py", [3], files=[proj / "data.txt"], env={"COLOUR": "blue"}, name="api")
    assert isinstance(job, homie.Job) and len(job.id) >= 8
    events = list(job.stream())
    out = b"".join(e.data for e in events if isinstance(e, OutputEvent) and e.stream == 1).decode()
    err = b"".join(e.data for e in events if isinstance(e, OutputEvent) and e.is_stderr).decode()
    assert out.splitlines() == [f"line {i} payload blue" for i in range(3)]
    assert err.splitlines() == [f"err {i}" for i in range(3)]
    started = [e for e in events if isinstance(e, JobEvent) and e.kind == "started"]
    assert started and started[0].peer in ("raj", "mike")
    end = events[-1]
    assert isinstance(end, Ended) and end.info.ok and end.info.results == ["out.txt"]
    info = job.wait(timeout=30)
    assert info.state is JobState.DONE and info.exit_code == 0 and info.peer == started[0].peer
    assert job.status is JobState.DONE and "line 2 payload blue" in job.logs()
    saved = job.results(proj / "got")
    assert [p.name for p in saved] == ["out.txt"]
    assert saved[0].read_text() == f"3 lines on {info.peer}\n"
    assert any(j.job_id == job.id and j.name == "api" for j in client.jobs())

    # a job that would run long: killed while it runs
    gate, mark = gate_path(), marker()
    hang = project(you, {"hang.py": f"import os, time\nprint('{mark}', flush=True)\n"
                                    f"while not os.path.exists('{gate}'): time.sleep(0.05)\n"})
    hung = client.run(hang / "hang.py", name=mark)
    wait_until(lambda: hung.status == JobState.RUNNING and mark in hung.logs(), 30, msg="the job to run")
    assert "stopping job" in hung.kill()
    end = hung.wait(timeout=30)
    assert end.terminal and not end.ok and (end.signal or end.state == JobState.KILLED)
    wait_until(lambda: not any(processes(h, mark) for h in (raj, mike)), 10, msg="the killed job's processes gone")
    with pytest.raises(homie.NoPeer) as e:
        client.run(proj / "job.py", peer="nobody")
    assert e.value.exit_code == 70


def test_executor_submit_map_as_completed_and_remote_exceptions(lan):
    c, raj, mike, you, client = lan
    k = 5
    with homie.Executor(client, pickle_by_value=[THIS], echo=False, name="t-executor") as ex:
        assert isinstance(ex, cf.Executor)
        got = list(ex.map(where, range(120)))
        assert [sq for _, sq in got] == [i * i for i in range(120)]
        assert {"raj", "mike"} <= {p for p, _ in got}, got  # spread over friends' machines
        futs = {ex.submit(lambda x: x * k, i): i for i in range(10)}  # a closure, by value
        done = {futs[f]: f.result() for f in cf.as_completed(futs, timeout=60)}
        assert done == {i: i * 5 for i in range(10)}
        bad = [ex.submit(fails, n) for n in range(5)]
        finished, _ = cf.wait(bad, timeout=60)
        assert len(finished) == 5
        assert [f.result() for f in bad if f.exception() is None] == [0, 1, 2, 4]
        e = bad[3].exception()
        assert type(e) is KeyError and e.args == ("no item 3",)
        assert isinstance(e.__cause__, homie.futures.RemoteTraceback)
        assert "in fails" in str(e.__cause__) and "KeyError: 'no item 3'" in str(e.__cause__)
        assert any(n.startswith("(raised on peer ") for n in getattr(e, "__notes__", ["(raised on peer "]))
    # its jobs are forgotten once their results are read
    assert not [j for j in client.jobs(all=True) if j.name and j.name.startswith("t-executor")]


def test_executor_cancel_kills_the_running_task_and_reruns_its_batchmates(lan):
    c, raj, mike, you, client = lan
    gate = gate_path()
    with homie.Executor(client, pickle_by_value=[THIS], echo=False, keep_jobs=True, batch_window=0.2,
                        peer="mike", max_workers=1) as ex:
        slow, quick = ex.submit(wait_for, str(gate), "slow"), ex.submit(wait_for, "/", "quick")
        wait_until(lambda: slow.running() and any(j.state == JobState.RUNNING and j.name and "(2 tasks)" in j.name
                                                  for j in client.jobs(all=False)), 30, msg="the batch to run")
        first = [j for j in client.jobs(all=False) if j.name and "(2 tasks)" in j.name][0]
        assert slow.cancel() and slow.cancelled()
        with pytest.raises(cf.CancelledError):
            slow.result()
        assert quick.result(timeout=60) == "quick"  # run again in a job of its own
        end = client.job(first.job_id).wait(timeout=30)
        assert end.terminal and not end.ok, end
        gate.touch()  # (a failed check above must not leave the task waiting for it)
    gate.unlink(missing_ok=True)


def test_a_module_the_peer_lacks_is_an_error_naming_the_peer(lan):
    c, raj, mike, you, client = lan
    with homie.Executor(client, peer="raj", echo=False) as ex:
        e = ex.submit(by_reference, 1).exception(timeout=60)  # this test module is not on raj
        assert isinstance(e, homie.futures.PeerEnvironmentError), e
        assert e.peer == "raj" and e.module == "test_pyapi_netns"
        assert "peer raj cannot load the task" in str(e)
        from sklearn.utils import gen_even_slices  # installed here, not on raj

        e = ex.submit(gen_even_slices, 10, 2).exception(timeout=60)
        assert isinstance(e, homie.futures.PeerEnvironmentError) and e.peer == "raj" and e.module == "sklearn"
        # raj's Python has no cloudpickle either: the executor ships its own
        assert ex.submit(sorted, [3, 1, 2]).result(timeout=60) == [1, 2, 3]


def test_joblib_backend_gives_scikit_learn_the_scores_of_a_local_run(lan):
    c, raj, mike, you, client = lan
    if c.job_python_missing:
        pytest.skip(f"no job Python with scikit-learn for the peers: {c.job_python_missing}")
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    import homie.joblib  # noqa: F401  (registers the backend)

    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500)
    grid = {"max_depth": [1, 2, 3], "min_samples_leaf": [1, 5]}
    local_cv = cross_val_score(model, X, y, cv=5)
    local_gs = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3).fit(X, y)
    with joblib.parallel_backend("homie", client=client, peer="mike", keep_jobs=True):
        remote_cv = cross_val_score(model, X, y, cv=5, n_jobs=-1)
        remote_gs = GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=3, n_jobs=-1).fit(X, y)
    assert list(remote_cv) == list(local_cv)
    assert list(remote_gs.cv_results_["mean_test_score"]) == list(local_gs.cv_results_["mean_test_score"])
    assert remote_gs.best_params_ == local_gs.best_params_
    ran = [j for j in client.jobs(all=True) if j.name and j.name.startswith("joblib")]
    assert ran and {j.peer for j in ran} == {"mike"} and all(j.ok for j in ran)
    # the job Python on mike is the owner's job_python, which sees scikit-learn
    with homie.Executor(client, peer="mike", echo=False) as ex:
        exe = ex.submit(eval, "__import__('sys').executable").result(timeout=60)
    assert exe.startswith("/tmp/homie-jobpy-")


def slow_square(i):
    time.sleep(2.5)
    return os.environ.get("HOMIE_PEER"), i * i


def test_a_lost_worker_runs_its_tasks_again_elsewhere():
    """The executor's jobs use the daemon's retry: kill -9 of a worker mid-task, and the
    futures still complete, with the right results, from the other peer."""
    import signal

    from jobhelp import daemon_pid

    with Cluster() as c:
        raj, mike, you = make_group(c, ["raj", "mike", "you"], per_host={"you": {"max_jobs": 0}})
        client = homie.Client(you.home)
        with homie.Executor(client, pickle_by_value=[THIS], echo=False, name="t-lost", retries=2) as ex:
            futs = [ex.submit(slow_square, i) for i in range(4)]
            wait_until(lambda: any(j.state == JobState.RUNNING and j.peer in ("raj", "mike")
                                   for j in client.jobs(all=False)), 30, msg="a task to run")
            victim = next(j.peer for j in client.jobs(all=False) if j.state == JobState.RUNNING)
            os.kill(daemon_pid(raj if victim == "raj" else mike), signal.SIGKILL)
            got = [f.result(timeout=90) for f in futs]
        survivor = "mike" if victim == "raj" else "raj"
        assert [sq for _, sq in got] == [0, 1, 4, 9]
        assert {p for p, _ in got} == {survivor}, got


def uses_testpkg(x):
    import homie_testpkg  # installed on the peer by the venv executor, from the wheel shipped with the job

    return homie_testpkg.VALUE, x


def test_requirements_build_the_tasks_environment_with_the_venv_executor():
    """requirements= goes through the venv executor: a wheel shipped with the tasks is installed
    on the peer (offline: namespace hosts reach no index), and the task imports it."""
    from test_owner_netns import WHEEL, build_wheel

    with Cluster() as c:
        raj, you = make_group(c, ["raj", "you"], per_host={"you": {"max_jobs": 0}})
        wheel = build_wheel(Path(c.logdir))
        client = homie.Client(you.home)
        with homie.Executor(client, pickle_by_value=[THIS], echo=False, requirements=[f"./{WHEEL}"],
                            files=[str(wheel)]) as ex:
            assert ex.submit(uses_testpkg, 7).result(timeout=120) == ("testpkg says hi", 7)
            assert list(ex.map(uses_testpkg, [1, 2])) == [("testpkg says hi", 1), ("testpkg says hi", 2)]
