# Attack 14: a structlog.py in the directory `homie up` is started from. The
# daemon must not import it. If it does, leave a marker and hand over the real
# structlog, so the daemon keeps working and only the marker tells.
import os
import sys

with open("__MARKFILE__", "w") as _f:
    _f.write(f"imported by pid {os.getpid()} uid {os.getuid()}\n")
_here = os.path.dirname(os.path.abspath(__file__))
del sys.modules[__name__]
_saved = sys.path[:]
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
import structlog as _real  # noqa: E402

sys.path[:] = _saved
sys.modules[__name__] = _real
