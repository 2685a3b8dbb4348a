#!/usr/bin/env bash
# Dispatch overhead: 2,000 no-op tasks on 2 slots, whole-command wall time of
# `infra run` against `xargs -P2` and GNU `parallel -j2` doing the same work.
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
dev=$(findmnt -no SOURCE --target "$W")
fstype=$(findmnt -no FSTYPE --target "$W")
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
# Between runs the journal and the results are moved aside, not deleted:
# deleting 8,000 files right before a run makes every file the next run
# creates slower on ext4 (it skips recently deleted inodes), a cost of the
# benchmark's own cleanup, not of dispatching. They are deleted at the end.
mkdir -p "$W/trash"
PREP="d=\$(mktemp -d -p $W/trash); mv $W/.infra/noop/journal.jsonl $W/results \$d/ 2>/dev/null || true"
hyperfine --warmup 1 --runs "$RUNS" --export-json "$W/h.json" -N \
  --prepare "sh -c '$PREP'" \
  "$BIN -C $W run noop all" \
  "xargs -P2 -n1 -a $W/ids true" \
  "xargs -P2 -n1 -a $W/ids sh -c true" \
  "parallel -j2 -a $W/ids sh -c true" > "$W/out.txt" 2>&1 || { cat "$W/out.txt"; exit 1; }
python3 - "$W/h.json" "$N" <<'P'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
names = ["infra run", "xargs -P2 true", "xargs -P2 sh -c true", "parallel -j2 sh -c true"]
med = dict(zip(names, (x["median"] for x in r)))
print(f"dispatch, {sys.argv[2]} no-op tasks on 2 slots (median of {len(r[0]['times'])} runs):")
for k, v in med.items():
    print(f"  {k:24s} {v:7.3f} s")
for k in names[1:]:
    print(f"  infra / {k:24s} = {med['infra run']/med[k]:.2f}x")
P
# The file work infra does per task and xargs does not, alone: a staging
# folder with stdout.log, stderr.log and runtime.json, moved into results/.
python3 - "$W/fs" "$N" "$RUNS" <<'P'
import os, statistics, sys, time
root, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for r in range(runs):
    d0 = f"{root}/{r}"
    os.makedirs(f"{d0}/results")
    t = time.perf_counter()
    for i in range(n):
        d = f"{d0}/s{i}"
        os.mkdir(d)
        for f in ("stdout.log", "stderr.log", "runtime.json"):
            with open(f"{d}/{f}", "w") as fh:
                fh.write("x\n")
        os.rename(d, f"{d0}/results/{i}")
    times.append(time.perf_counter() - t)
print(f"  file work alone (python, {n} x mkdir + 3 files + rename): {statistics.median(times):.3f} s")
P
