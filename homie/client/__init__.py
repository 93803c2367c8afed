"""homie from Python: a client of the local daemon, through its control socket.

    import homie

    client = homie.Client()
    job = client.run("train.py", ["--epochs", "10"], files=["data.csv"])
    for ev in job.stream():
        if isinstance(ev, homie.OutputEvent):
            print(ev.text, end="")
    job.results("results")

The `homie` command is a client of this same module (homie/cli/): every verb
that talks to the daemon goes through `Client`, so the shell and Python see
the same jobs, the same errors and the same exit codes (homie.errors).

The package: connection.py (the wire), records.py and events.py (what the daemon
tells, typed), job.py (Job, and delivering results), client.py (Client).

Light on purpose: the standard library and homie's lightest modules only (no
cryptography, psutil or yaml), so `import homie` and `homie peers` stay fast.
"""

from homie.client.client import Client
from homie.client.connection import Connection
from homie.client.events import Ended, JobEvent, OutputEvent
from homie.client.job import Job, deliver
from homie.client.records import JobInfo, JobState, Peer

__all__ = [
    "Client", "Job", "JobInfo", "JobState", "Peer", "OutputEvent", "JobEvent", "Ended", "Connection", "deliver",
]
