"""Python functions on friends' machines: a `concurrent.futures.Executor` over homie.

    from concurrent.futures import as_completed
    from homie.futures import Executor

    with Executor() as ex:
        squares = list(ex.map(pow, range(1000), [2] * 1000))
        fut = ex.submit(sum, [1, 2, 3])
        print(fut.result())

How it works: tasks are pickled with cloudpickle into a batch file, and a small runner
script (homie/pyrunner.py) runs the batch as an ordinary homie job (Client.run) on a peer,
in its sandbox; the job's result file holds each task's return value or exception. Small
tasks travel many to a job: submit() calls that arrive within `batch_window` seconds, and
map()'s items, are split into as many jobs as there are slots among the peers. See
docs/api.md for what can be pickled and where the code runs.
"""

from homie.futures.errors import PeerEnvironmentError, RemoteError, RemoteTraceback, TaskError
from homie.futures.executor import Executor

__all__ = ["Executor", "RemoteError", "PeerEnvironmentError", "RemoteTraceback", "TaskError"]
