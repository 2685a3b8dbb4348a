#!/usr/bin/env bash
# Two builds of infra side by side on the dispatch benchmark's campaign
# (2,000 no-op tasks on 2 slots), run alternately in rounds so that both see
# the same machine and file-system state; prints each one's median.
#
#   scripts/bench/ab.sh OLD_BINARY NEW_BINARY      (RUNS=8, DIR=/tmp)
#
# How docs/BENCHMARKS.md compared a change with the build before it: build
# the old commit, copy target/release/infra aside, build the new one.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
python3 - "$1" "$2" "${RUNS:-8}" "${DIR:-${TMPDIR:-/tmp}}" "${N:-2000}" <<'P'
import json, os, shutil, statistics, subprocess, sys, tempfile, time
old, new, rounds, base, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
bins = {"A " + old: old, "B " + new: new}
w = tempfile.mkdtemp(dir=base)
try:
    os.makedirs(f"{w}/plans/templates")
    os.makedirs(f"{w}/trash")
    with open(f"{w}/plans/templates/noop.json.hbs", "w") as f:
        f.write('{"steps": [{"name": "noop", "command": "true"}]}')
    with open(f"{w}/plans/noop.json", "w") as f:
        json.dump({"phase": "noop", "name": "dispatch benchmark",
                   "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1, "slots": 2}},
                   "layers": [{"id": "L0", "grid": {"backend": "noop", "id": "noop-{i}",
                                                    "factors": {"i": list(range(n))}}}]}, f)
    times = {k: [] for k in bins}
    for r in range(rounds + 1):  # round 0 warms up
        for k, b in bins.items():
            subprocess.run([b, "-C", w, "plan", "noop"], check=True, stdout=subprocess.DEVNULL)
            d = tempfile.mkdtemp(dir=f"{w}/trash")  # set aside, not deleted
            for p in (f"{w}/.infra/noop/journal.jsonl", f"{w}/results"):
                if os.path.exists(p):
                    os.rename(p, f"{d}/{os.path.basename(p)}")
            t = time.perf_counter()
            subprocess.run([b, "-C", w, "run", "noop", "all"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r:
                times[k].append(time.perf_counter() - t)
    print(f"{n} no-op tasks on 2 slots in {base}, {rounds} rounds:")
    for k, v in times.items():
        print(f"  {k}: median {statistics.median(v):.3f} s (range {min(v):.3f} .. {max(v):.3f})")
finally:
    shutil.rmtree(w, ignore_errors=True)
P
