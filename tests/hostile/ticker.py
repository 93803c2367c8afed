"""The legitimate job that runs beside an attack: writes its result file,
prints N numbered lines, and says whether its file was changed under it."""
import sys
import time

tag, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
mine = f"ticker-{tag}.txt"
with open(mine, "w") as f:
    f.write(f"{tag} original\n")
for i in range(n):
    print(f"line {i}", flush=True)
    time.sleep(pause)
with open(mine) as f:
    now = f.read()
print("INTACT" if now == f"{tag} original\n" else f"TAMPERED {now[:60]!r}", flush=True)
