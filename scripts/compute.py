#!/usr/bin/env python3
"""Quickstart stand-in for a computation: sum of squares up to n."""
import argparse, json, os, time

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, required=True)
ap.add_argument("--label", default="")
ap.add_argument("--out", required=True)
a = ap.parse_args()
t0 = time.perf_counter()
total = sum(i * i for i in range(a.n))
dt = time.perf_counter() - t0
with open(a.out, "w") as f:
    json.dump({"label": a.label, "n": a.n, "sum_of_squares": total, "seconds": round(dt, 6),
               "node": os.environ.get("INFRA_NODE_NAME", "")}, f)
print(f"{a.label}: n={a.n} in {dt:.3f}s")
