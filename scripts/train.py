#!/usr/bin/env python3
"""Stand-in trainer for the sweep example: a deterministic synthetic loss
curve per (variant, lr, wd, seed). Writes loss.csv (time series) and
metrics.json (one table row)."""
import argparse, json, math, os, random, time

ap = argparse.ArgumentParser()
ap.add_argument("--variant", required=True)
ap.add_argument("--lr", type=float, required=True)
ap.add_argument("--wd", type=float, required=True)
ap.add_argument("--seed", type=int, required=True)
ap.add_argument("--steps", type=int, default=40)
ap.add_argument("--step-seconds", type=float, default=0.0)
ap.add_argument("--out-dir", default=".")
a = ap.parse_args()

scale = {"small": 1.3, "base": 1.0, "wide": 0.9, "deep": 0.8}.get(a.variant, 1.0)
rng = random.Random(f"{a.variant}-{a.lr}-{a.wd}-{a.seed}")
best = math.inf
rows = ["step,loss,lr"]
loss = 0.0
for step in range(1, a.steps + 1):
    decay = math.exp(-step * a.lr * 60)
    loss = scale * (0.4 + 2.0 * decay) + a.wd * 0.5 + rng.gauss(0, 0.02)
    best = min(best, loss)
    rows.append(f"{step},{loss:.6f},{a.lr}")
    if a.step_seconds:
        time.sleep(a.step_seconds)
with open(os.path.join(a.out_dir, "loss.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")
metrics = {"final_loss": round(loss, 6), "best_loss": round(best, 6),
           "val_accuracy": round(max(0.0, 1.0 - best / 3.0), 6), "steps": a.steps,
           "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
with open(os.path.join(a.out_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f)
print(json.dumps(metrics))
