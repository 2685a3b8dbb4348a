#!/usr/bin/env bash
# Node CPU per no-op step: `infra node step` (the node agent) running `true`
# and uploading its logs and runtime.json to the emulator's S3, N times;
# user + system CPU seconds of the agent and its children (GNU time), the
# bundle already current (as on a node after its first step).
#
#   N=20 scripts/bench/node-cpu.sh [path/to/infra]      (default target/release/infra)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-$PWD/target/release/infra}
N=${N:-20}
[ -x "$BIN" ] || { echo "node-cpu: $BIN missing (cargo build --release)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "node-cpu: needs GNU time (/usr/bin/time)" >&2; exit 2; }
python3 -c 'import moto' 2>/dev/null || scripts/setup-test-deps.sh
W=$(mktemp -d -t infra-node-cpu.XXXXXX)
EMU=""
cleanup() { [ -n "$EMU" ] && kill "$EMU" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
python3 tests/emulator/server.py --port 0 --port-file "$W/port" --parent-pid $$ --stdin-watch off \
  </dev/null >"$W/emu.out" 2>"$W/emu.err" &
EMU=$!
for _ in $(seq 300); do [ -s "$W/port" ] && break; sleep 0.1; done
[ -s "$W/port" ] || { echo "node-cpu: the emulator did not start" >&2; exit 1; }
for v in $(compgen -e | grep '^AWS_' || true); do unset "$v"; done
export AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$W/port") AWS_ACCESS_KEY_ID=424242000009 \
  AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_CONFIG_FILE=$W/none AWS_SHARED_CREDENTIALS_FILE=$W/none INFRA_NODE_ROOT=$W/node
python3 - <<'PY'
import boto3
boto3.client("s3").create_bucket(Bucket="nodecpu")
PY
mkdir -p "$W/node"
total=0
for i in $(seq "$N"); do
  spec="{\"task\": \"t$i\", \"attempt\": 1, \"key\": \"0\", \"name\": \"main\", \"rank\": 0, \"dest\": \"s3://nodecpu/p/results/t$i/attempt-1\", \"command\": \"true\"}"
  /usr/bin/time -f "%U %S" -o "$W/time" "$BIN" node step --spec "$spec" >/dev/null 2>"$W/err" ||
    { echo "node-cpu: the step failed:" >&2; cat "$W/err" >&2; exit 1; }
  total=$(awk -v t="$total" '{printf "%.3f", t + $1 + $2}' "$W/time")
done
awk -v t="$total" -v n="$N" -v b="$BIN" 'BEGIN { printf "node-cpu: %s: %d no-op steps, %.3f CPU-s in all, %.4f CPU-s per step (user + sys, agent and its shell)\n", b, n, t, t / n }'
