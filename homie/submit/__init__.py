"""The submitting side (HTCondor's schedd and shadow): every job this machine
sends out, from the queue to the results.

- job.py: the typed job record and its states
- intake.py: checking a `run` request and collecting its inputs
- dispatch.py: which queued job goes to which peer (pure policy)
- schedd.py: the queue that owns the jobs and restores them after a restart
- shadow.py: one job's driver (upload, output, results)
- attempts.py, migration.py: running a job again when its worker is lost or evicts it
- dial.py: opening a job channel to a peer
"""
