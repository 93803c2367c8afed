"""Attack 11, member B's job with the same requirements: what of A's does it get?"""
import glob
import json
import os
import sys

rep = {"prefix": sys.prefix, "poisoned": os.environ.get("HOMIE_POISONED"),
       "pth": sorted(os.path.basename(p) for p in glob.glob(os.path.join(sys.prefix, "lib", "python*",
                                                                          "site-packages", "zz_*.pth")))}
print("HOSTILE " + json.dumps(rep), flush=True)
