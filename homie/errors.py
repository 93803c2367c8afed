"""Exceptions and the exit codes scripts can rely on.

Exit codes of `homie run` pass the job's own status through (0-125, 128+N for a
signal), so homie's own failures use codes a job is unlikely to return.
"""

# Documented in README.md ("Exit codes"); keep the two in sync.
EXIT_OK = 0
EXIT_FAILURE = 1  # generic: unknown job id, refused request
EXIT_USAGE = 2  # bad command line, bad config value, no inputs
EXIT_NO_DAEMON = 69  # EX_UNAVAILABLE: the local daemon is not running
EXIT_NO_PEER = 70  # no peer could take the job / unknown peer
EXIT_PEER_LOST = 71  # the peer died or the link dropped for good mid-job
EXIT_TRANSFER = 72  # upload or result download failed
EXIT_INTERNAL = 73  # a homie bug, or a job the worker could not start
EXIT_MAP_FAILED = 4  # `homie map`: one or more inputs failed (how many: summary, --json, --joblog)
EXIT_WOULD_WAIT = 75  # EX_TEMPFAIL: `homie run --explain` found no free peer now; the job would queue
# A job killed for exceeding a limit exits 128+N like any signalled job; the reason is printed.


class HomieError(Exception):
    """An error with a one-line message meant for the user, and an exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(HomieError):
    exit_code = EXIT_USAGE


class KeyFileError(HomieError):
    exit_code = EXIT_USAGE


class UnsafeHomeError(HomieError):
    """A home (HOMIE_HOME) that another local user could change under us."""

    exit_code = EXIT_USAGE


class ProtocolError(HomieError):
    """A peer (or a local client) sent bytes that break the wire protocol."""

    exit_code = EXIT_INTERNAL


class ManifestError(HomieError):
    """A file manifest that is unsafe or inconsistent (hostile names, lying sizes)."""

    exit_code = EXIT_TRANSFER


class UsageError(HomieError):
    """A request homie refuses as mistyped: a bad value, a missing file, no inputs (exit 2)."""

    exit_code = EXIT_USAGE


class NoDaemon(HomieError):
    """The local daemon is not running, or its control socket is not ours to use (exit 69)."""

    exit_code = EXIT_NO_DAEMON


class NoPeer(HomieError):
    """No peer could take the job, or the peer named does not exist (exit 70)."""

    exit_code = EXIT_NO_PEER


class PeerLost(HomieError):
    """The peer running a job was lost (and its retries, if any, were spent) (exit 71)."""

    exit_code = EXIT_PEER_LOST


class TransferError(HomieError):
    """Inputs could not be uploaded, or results not downloaded or saved (exit 72)."""

    exit_code = EXIT_TRANSFER


class InternalError(HomieError):
    """A homie bug, or a job the worker could not start (exit 73)."""

    exit_code = EXIT_INTERNAL


_BY_CODE: dict[int, type[HomieError]] = {
    EXIT_USAGE: UsageError, EXIT_NO_DAEMON: NoDaemon, EXIT_NO_PEER: NoPeer, EXIT_PEER_LOST: PeerLost,
    EXIT_TRANSFER: TransferError, EXIT_INTERNAL: InternalError,
}


def error_for(message: str, exit_code: int | None = None) -> HomieError:
    """The HomieError subclass that carries `exit_code` (NoPeer for 70...), or a plain
    HomieError with that code: how a `fail` from the daemon becomes an exception."""
    cls = _BY_CODE.get(exit_code if exit_code is not None else EXIT_FAILURE, HomieError)
    return cls(message, exit_code)
