#!/usr/bin/env python3
"""A stand-in benchmark for the doe-suite example (examples/doe-suite/):
reads the run's config.json from its working folder, as doe-suite jobs
do, and writes its measurements under results/ (JSON or CSV) and a
`latency: <ms> ms` line on stdout."""
import argparse
import json
import os

ap = argparse.ArgumentParser()
ap.add_argument("--size", type=int, required=True)
ap.add_argument("--opt", choices=["True", "False"], default="False")
ap.add_argument("--format", choices=["json", "csv"], default="json")
args = ap.parse_args()

with open("config.json") as f:
    config = json.load(f)

# a deterministic "measurement": work grows with size, opt halves it
work = sum(i * i for i in range(args.size * 1000))
latency_ms = round(args.size * (0.5 if args.opt == "True" else 1.0) + config.get("base_latency_ms", 0), 3)
os.makedirs("results", exist_ok=True)
if args.format == "json":
    with open("results/out.json", "w") as f:
        json.dump({"latency_ms": latency_ms, "work": work % 1000, "seen_size": config.get("size")}, f)
else:
    with open("results/out.csv", "w") as f:
        f.write("op,latency_ms\n")
        f.write(f"read,{latency_ms}\n")
        f.write(f"write,{latency_ms * 2}\n")
print(f"latency: {latency_ms} ms")
