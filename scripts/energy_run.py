#!/usr/bin/env python3
"""Stand-in for the energy team's measurement runner: one configuration
(model x batch size), `--warmup` warm-up runs then one measured run, each
run's metrics as one row of runs.json (energy in joules, duration, mean
power, tokens per joule). Deterministic per configuration. A stop
(SIGTERM/SIGINT) is clean: the runs done so far stay in runs.json.

`--fail-first N` makes the first N attempts fail the way the team's runs
fail (an out-of-memory error on stderr), to show the retries."""
import argparse, json, os, random, signal, sys, time

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--batch", type=int, required=True)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--run-seconds", type=float, default=0.2)
ap.add_argument("--fail-first", type=int, default=0)
ap.add_argument("--out", default="runs.json")
a = ap.parse_args()

runs = []


def save():
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(runs, f)
    os.replace(tmp, a.out)


def stop(signum, _frame):
    save()
    print(f"stopped by signal {signum} after {len(runs)} run(s)", file=sys.stderr)
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)

attempt = int(os.environ.get("INFRA_ATTEMPT", "1"))
if attempt <= a.fail_first:
    print(f"loading {a.model} with batch {a.batch}", file=sys.stderr)
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
    sys.exit(1)

rng = random.Random(f"{a.model}-{a.batch}")
size = {"small": 1.0, "base": 2.2, "large": 4.5}.get(a.model, 1.0)
for i in range(a.warmup + 1):
    kind = "measured" if i == a.warmup else "warmup"
    t0 = time.perf_counter()
    time.sleep(a.run_seconds)
    seconds = time.perf_counter() - t0
    # warm-ups run hotter (caches, clocks settling)
    power = 60.0 * size * (1.15 if kind == "warmup" else 1.0) + rng.gauss(0, 1.5)
    tokens = 512 * a.batch
    energy = power * seconds
    runs.append({"run": f"{kind}-{i + 1}" if kind == "warmup" else "measured", "kind": kind,
                 "energy_j": round(energy, 6), "seconds": round(seconds, 6),
                 "mean_power_w": round(power, 6), "tokens": tokens,
                 "tokens_per_joule": round(tokens / energy, 6)})
    save()
print(json.dumps(runs[-1]))
