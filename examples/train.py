"""A stand-in training script for the demo: prints progress, saves a model."""

import argparse
import json
import time

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--data", default="data.csv")
args = parser.parse_args()

rows = [line.split(",") for line in open(args.data).read().splitlines()[1:]]
print(f"loading data... {len(rows)} rows")
w = 0.0
for epoch in range(1, args.epochs + 1):
    for x, y in rows:
        w += 0.01 * (float(y) - w * float(x)) * float(x)
    loss = sum((float(y) - w * float(x)) ** 2 for x, y in rows) / len(rows)
    print(f"epoch {epoch}/{args.epochs} loss={loss:.4f}")
    time.sleep(0.3)
json.dump({"w": w, "epochs": args.epochs}, open("model.pt", "w"))
print("done, saved model.pt")
