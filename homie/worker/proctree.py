"""Finding a job's processes: its tree, and what escaped it (by its mark or by its uid).

The runner watches and kills a job through these; the worker uses them to sweep
what a job left behind after a restart, and makes the daemon the subreaper that
inherits a sandbox's orphaned init.
"""

from __future__ import annotations


def process_tree(pid: int):
    """The process and its descendants now ([] once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def processes_of_job(job_id: str, uid: int | None = None):
    """Processes carrying HOMIE_JOB_ID=job_id in their environment: finds a
    descendant that escaped the session with setsid and was re-parented."""
    import psutil

    found = []
    for p in processes_of_uid(uid) if uid is not None else psutil.process_iter():
        try:
            if p.environ().get("HOMIE_JOB_ID") == job_id:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


def processes_of_uid(uid: int):
    """Every process whose real uid is `uid` (a per-job uid: all of them are that job's)."""
    import psutil

    found = []
    for p in psutil.process_iter(["uids"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid:
                found.append(p)
        except psutil.Error:
            continue
    return found


def enable_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux), so a
    sandbox's init, orphaned when bubblewrap exits first, is ours to wait for."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False
