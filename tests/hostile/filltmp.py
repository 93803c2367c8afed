"""Attack 9: write into /tmp until the write fails (or a safety ceiling: the
test machine is shared); report how far it got; remove the file.

argv: MARK CEILING_MB
"""
import errno
import json
import os
import sys

mark, ceiling = sys.argv[1], int(sys.argv[2])
path = f"/tmp/{mark}.fill"
chunk = b"\0" * (4 << 20)
written, err = 0, None
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
try:
    while written < ceiling << 20:
        try:
            written += os.write(fd, chunk)
        except OSError as e:
            err = errno.errorcode.get(e.errno, str(e.errno))
            break
finally:
    os.close(fd)
    os.unlink(path)
print("HOSTILE " + json.dumps({"mb": written >> 20, "error": err}), flush=True)
