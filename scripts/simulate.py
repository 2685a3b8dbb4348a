#!/usr/bin/env python3
"""Stand-in for the statistics team's simulation: B repetitions of an
estimator for one (table, dgp, d, S) cell, this partition's share of the
seeds. Appends one row per seed and skips seeds already in the file (what
the team's scripts do after a spot reclaim)."""
import argparse, csv, math, os, random

ap = argparse.ArgumentParser()
ap.add_argument("--table", required=True)
ap.add_argument("--dgp", required=True)
ap.add_argument("--d", type=int, required=True)
ap.add_argument("--S", type=int, required=True)
ap.add_argument("--B", type=int, required=True)
ap.add_argument("--partition", type=int, default=0)
ap.add_argument("--n-partitions", type=int, default=1)
ap.add_argument("--n-workers", type=int, default=1)
ap.add_argument("--out", required=True)
a = ap.parse_args()

done = set()
if os.path.exists(a.out):
    with open(a.out) as f:
        done = {int(r["seed"]) for r in csv.DictReader(f)}
new = not os.path.exists(a.out)
with open(a.out, "a", newline="") as f:
    w = csv.writer(f)
    if new:
        w.writerow(["seed", "partition", "estimate", "std_error"])
    for seed in range(a.partition, a.B, a.n_partitions):
        if seed in done:
            continue
        rng = random.Random(f"{a.table}-{a.dgp}-{a.d}-{a.S}-{seed}")
        xs = [rng.gauss(1.0 if a.dgp == "dgp1" else 0.5, 1.0) for _ in range(a.S * 10)]
        m = sum(xs) / len(xs)
        se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
        w.writerow([seed, a.partition, f"{m:.6f}", f"{se:.6f}"])
        f.flush()  # checkpoint after each seed
