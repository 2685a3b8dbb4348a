#!/usr/bin/env bash
# Dispatch overhead: 2,000 no-op tasks on 2 slots, whole-command wall time of
# `infra run` against `xargs -P2` and GNU `parallel -j2` doing the same work
# (the median of RUNS rounds; needs Debian's parallel).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-2000}
RUNS=${RUNS:-5}
BIN=$PWD/target/release/infra
# Where the campaign's files go decides much of the figure (infra writes four
# files per task, xargs none):
#   DIR=/dev/shm      tmpfs, the file system's share taken out
#   FS=ext4-image     a fresh ext4 made by mkfs.ext4's defaults (with a journal,
#                     as on most machines), loop-mounted; needs root
#   default           $TMPDIR or /tmp, whatever this machine has there
MNT=
cleanup() {
  rm -rf "$W"
  if [ -n "$MNT" ]; then umount "$MNT" && rm -rf "$MNT"; fi
}
if [ "${FS:-}" = ext4-image ]; then
  MNT=$(mktemp -d)
  truncate -s 4G "$MNT.img"
  mkfs.ext4 -q -F "$MNT.img"
  mount -o loop "$MNT.img" "$MNT"
  rm -f "$MNT.img" # the mount keeps it until it is unmounted
  DIR=$MNT
fi
W=$(mktemp -d -p "${DIR:-${TMPDIR:-/tmp}}")
trap cleanup EXIT
dev=$(findmnt -no SOURCE --target "$W" | tail -n 1)
fstype=$(findmnt -no FSTYPE --target "$W" | tail -n 1)
if [ "$fstype" = ext4 ]; then
  if dumpe2fs -h "$dev" 2>/dev/null | grep -q has_journal; then fstype="ext4 (journal)"; else fstype="ext4 (no journal)"; fi
fi
echo "campaign folder: $W on $fstype"
mkdir -p "$W/plans/templates"
cat > "$W/plans/templates/noop.json.hbs" <<'T'
{"steps": [{"name": "noop", "command": "true"}]}
T
python3 - "$W/plans/noop.json" "$N" <<'P'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
json.dump({"phase": "noop", "name": "dispatch benchmark",
           "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": 1, "slots": 2}},
           "layers": [{"id": "L0", "grid": {"backend": "noop", "id": "noop-{i}", "factors": {"i": list(range(n))}}}]}, open(path, "w"))
P
"$BIN" -C "$W" plan noop > /dev/null
seq "$N" > "$W/ids"
# The commands run in rounds, one after the other within a round (the first
# round is a warm-up), so that each figure sees the same machine and the same
# file-system state as the others: on this machine's ext4 the cost of
# creating a file varies several-fold with what was deleted in the minutes
# before. Between runs the journal and the results are moved aside, not
# deleted (deleting 8,000 files right before a run slows the next run's file
# creation; they are deleted at the end).
# "file work alone" is the file work infra does per task and xargs does not,
# without any process: a folder with stdout.log, stderr.log and runtime.json,
# moved into results/ (Python).
mkdir -p "$W/trash"
python3 - "$W" "$BIN" "$N" "$RUNS" <<'P2'
import os, statistics, subprocess, sys, tempfile, time
w, bin_, n, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ids = f"{w}/ids"

def aside():
    d = tempfile.mkdtemp(dir=f"{w}/trash")
    for p in (f"{w}/.infra/noop/journal.jsonl", f"{w}/results"):
        if os.path.exists(p):
            os.rename(p, f"{d}/{os.path.basename(p)}")

def file_work():
    d0 = tempfile.mkdtemp(dir=f"{w}/trash")
    os.mkdir(f"{d0}/results")
    for i in range(n):
        d = f"{d0}/s{i}"
        os.mkdir(d)
        for f in ("stdout.log", "stderr.log", "runtime.json"):
            with open(f"{d}/{f}", "w") as fh:
                fh.write("x\n")
        os.rename(d, f"{d0}/results/{i}")

commands = {
    "infra run": [bin_, "-C", w, "run", "noop", "all"],
    # `true` with no argument, as infra runs it (with one, coreutils' true
    # sets up its locale for --help, which costs it a tenth of its time)
    "xargs -P2 -I{} true": ["xargs", "-P2", "-I{}", "-a", ids, "true"],
    "xargs -P2 true": ["xargs", "-P2", "-n1", "-a", ids, "true"],
    "xargs -P2 sh -c true": ["xargs", "-P2", "-n1", "-a", ids, "sh", "-c", "true"],
    "parallel -j2 sh -c true": ["parallel", "-j2", "-a", ids, "sh", "-c", "true"],
    "file work alone": None,
}
times = {k: [] for k in commands}
for r in range(runs + 1):
    for name, argv in commands.items():
        if name == "infra run":
            aside()
        t = time.perf_counter()
        if argv is None:
            file_work()
        else:
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r > 0:
            times[name].append(time.perf_counter() - t)
med = {k: statistics.median(v) for k, v in times.items()}
print(f"dispatch, {n} no-op tasks on 2 slots (median of {runs} rounds):")
for k, v in med.items():
    lo, hi = min(times[k]), max(times[k])
    print(f"  {k:24s} {v:7.3f} s   (range {lo:.3f} .. {hi:.3f})")
for k in ["xargs -P2 -I{} true", "xargs -P2 true", "xargs -P2 sh -c true", "parallel -j2 sh -c true"]:
    print(f"  infra / {k:24s} = {med['infra run'] / med[k]:.2f}x")
# per round, so that both halves of the difference saw the same state
over = [a - b for a, b in zip(times["infra run"], times["file work alone"])]
print(f"  infra run minus file work alone, per round: median {statistics.median(over):.3f} s")
P2
