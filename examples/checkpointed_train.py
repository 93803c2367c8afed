"""A training loop that survives its machine leaving: copy this pattern.

    homie run examples/checkpointed_train.py --epochs 50

Every epoch it saves model, optimizer and RNG state into $HOMIE_CHECKPOINT_DIR,
writing a temporary file and renaming it into place, so homie never sees half a
checkpoint. If the friend's laptop running it leaves (lid closed, `homie pause
--evict`, owner back under `accept_jobs: idle`), homie starts it again on another
peer with that directory restored, and it goes on from the last epoch saved.
Plain Python (no numpy) so it runs anywhere; with PyTorch the same shape is
`torch.save(state, tmp); os.replace(tmp, path)`.
"""

import argparse
import os
import pickle
import random
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--seconds-per-epoch", type=float, default=1.0)
args = parser.parse_args()

ckpt_dir = os.environ.get("HOMIE_CHECKPOINT_DIR", "checkpoint")  # set by homie; a local run uses ./checkpoint
os.makedirs(ckpt_dir, exist_ok=True)
ckpt = os.path.join(ckpt_dir, "state.pkl")


def save(state: dict) -> None:
    tmp = ckpt + ".tmp"  # names ending .tmp are never taken as a checkpoint
    with open(tmp, "wb") as f:
        pickle.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt)  # atomic: homie sees the old checkpoint or the new one


if os.path.exists(ckpt):
    with open(ckpt, "rb") as f:
        state = pickle.load(f)
    print(f"resuming from epoch {state['epoch']}", flush=True)
else:
    state = {"epoch": 0, "weights": [0.0] * 100, "momentum": [0.0] * 100, "rng": random.Random(0).getstate()}

# Eviction sends SIGTERM and waits evict_grace_seconds: save and leave.
signal.signal(signal.SIGTERM, lambda *_: (save(state), sys.exit(143)))

rng = random.Random()
rng.setstate(state["rng"])
while state["epoch"] < args.epochs:
    w, m = state["weights"], state["momentum"]
    for i in range(len(w)):  # one epoch of "training"
        grad = 0.2 * w[i] - 1.0 + rng.gauss(0.0, 0.1)
        m[i] = 0.9 * m[i] + grad
        w[i] -= 0.05 * m[i]
    time.sleep(args.seconds_per_epoch)
    state["epoch"] += 1
    state["rng"] = rng.getstate()
    save(state)
    loss = sum((0.2 * x - 1.0) ** 2 for x in w) / len(w)
    print(f"epoch {state['epoch']}/{args.epochs} loss {loss:.6f}", flush=True)

with open("model.txt", "w") as f:  # the result: comes home into ./results
    f.write(" ".join(f"{x:.6f}" for x in state["weights"]) + "\n")
print("done", flush=True)
