"""Where a node keeps its state: HOMIE_HOME (default ~/.homie)."""

from __future__ import annotations

import os
from pathlib import Path


class Home:
    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            root = os.environ.get("HOMIE_HOME") or Path.home() / ".homie"
        self.root = Path(root).expanduser().absolute()

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def key(self) -> Path:
        return self.root / "key"

    @property
    def socket(self) -> Path:
        return self.root / "homie.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "homie.pid"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "homie.log"

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def jobs(self) -> Path:
        """Job directories of jobs this node runs for others (worker side)."""
        return self.root / "work"

    @property
    def outbox(self) -> Path:
        """Per-job state of jobs this node submitted: fetched results, logs."""
        return self.root / "jobs"

    @property
    def blobs(self) -> Path:
        return self.root / "cache" / "blobs"

    @property
    def venvs(self) -> Path:
        return self.root / "cache" / "venvs"

    def ensure(self) -> None:
        # 0700: the home holds the key, the control socket and other people's jobs.
        old = os.umask(0o077)
        try:
            for d in (self.root, self.root / "logs", self.jobs, self.outbox, self.blobs, self.venvs):
                d.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
        os.chmod(self.root, 0o700)
