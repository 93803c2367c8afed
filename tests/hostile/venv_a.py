"""Attack 11, member A's job: plant a .pth in the environment it runs in."""
import glob
import json
import os
import sys

mark = sys.argv[1]
rep = {"prefix": sys.prefix, "planted": [], "refused": {}, "poisoned": os.environ.get("HOMIE_POISONED")}
for sp in glob.glob(os.path.join(sys.prefix, "lib", "python*", "site-packages")):
    p = os.path.join(sp, f"zz_run_{mark}.pth")
    try:
        with open(p, "w") as f:
            f.write(f"import os; os.environ['HOMIE_POISONED'] = 'run-{mark}'\n")
        rep["planted"].append(p)
    except OSError as e:
        rep["refused"][p] = type(e).__name__
print("HOSTILE " + json.dumps(rep), flush=True)
