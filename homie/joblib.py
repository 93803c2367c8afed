"""A joblib backend running on the group's machines: scikit-learn's n_jobs goes to friends.

    import joblib
    import homie.joblib  # registers the "homie" backend

    with joblib.parallel_backend("homie"):
        scores = cross_val_score(model, X, y, cv=5, n_jobs=-1)

Keyword arguments of parallel_backend("homie", ...) go to homie.futures.Executor (peer=,
requirements=, pickle_by_value=, client=...). Each joblib batch is one task of the
executor, which packs tasks into homie jobs; n_jobs=-1 means every slot of the peers seen.
"""

from __future__ import annotations

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase
from joblib.parallel import register_parallel_backend

from homie.futures import Executor

__all__ = ["HomieBackend"]


class HomieBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ParallelBackendBase over a homie.futures.Executor (one per backend instance,
    shared by the Parallel calls made under one parallel_backend("homie") block)."""

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(self, nesting_level=None, inner_max_num_threads=None, **executor_kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        executor_kwargs.setdefault("echo", False)
        executor_kwargs.setdefault("name", "joblib")
        self.executor_kwargs = executor_kwargs
        self._executor: Executor | None = None

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = Executor(**self.executor_kwargs)
        return self._executor

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        slots = self.executor._slots()
        if n_jobs is None or n_jobs == -1:
            return slots
        if n_jobs < 0:  # joblib's -2: all but one
            return max(1, slots + 1 + n_jobs)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, **backend_args):
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func, callback=None):
        future = self.executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    apply_async = submit  # joblib < 1.5 calls this name

    def retrieve_result_callback(self, out):
        return out.result()

    def retrieve_result(self, out, timeout=None):
        return out.result(timeout)

    def abort_everything(self, ensure_ready=True):
        """After a task failed: the others are cancelled (their jobs killed)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            for batch in list(self._executor._running.values()):
                for t in batch.tasks:
                    t.future.cancel()
            self._executor = None

    def terminate(self):
        """The end of the parallel_backend block's last Parallel call: the executor's jobs are done."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def get_nested_backend(self):
        from joblib._parallel_backends import SequentialBackend

        # Inside a task (on the peer) nested Parallel calls run there, one after the other.
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None


register_parallel_backend("homie", HomieBackend)
