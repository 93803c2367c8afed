"""The lending side (HTCondor's startd and starter): this machine's slots lent to friends' jobs.

- startd.py: the Worker, which owns the jobs here, the slot book and what the parts share
- server.py: connections, the gate and the TLS handshake (I/O only)
- session.py: what each request on a job channel means
- slots.py: who may have a slot now (pure policy)
- starter.py: running one job; launch.py: what to start, as whom, under which limits;
  runner.py: its process tree; proctree.py: finding its processes;
  sandbox.py, identity.py, cgroup.py: its isolation; jobdir.py: its directory; context.py: what executors see
- owner.py: whether the owner is back (accept_jobs: idle)
"""
