"""Attack 8: fork until fork fails (or a safety ceiling: the test machine is
shared), children sleeping; then the main process waits HOLD seconds and exits,
leaving them all behind.

argv: MARK CEILING HOLD
"""
import json
import os
import sys
import time

mark, ceiling, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, err = 0, None
t0 = time.monotonic()
while n < ceiling:
    try:
        pid = os.fork()
    except OSError as e:
        err = f"{type(e).__name__}: errno {e.errno}"
        break
    if pid == 0:
        try:
            time.sleep(120)
        finally:
            os._exit(0)
    n += 1
print("HOSTILE " + json.dumps({"forked": n, "error": err, "seconds": round(time.monotonic() - t0, 2)}),
      flush=True)
time.sleep(hold)
