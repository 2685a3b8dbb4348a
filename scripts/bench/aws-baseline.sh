#!/usr/bin/env bash
# The baseline of scripts/bench/aws-path.sh: what a team does today without
# infra. For each task, one `aws ssm send-command` (AWS-RunShellScript) to an
# instance, `aws ssm get-command-invocation` every POLL seconds until the
# invocation ends, then one more `get-command-invocation` whose whole answer
# (status, exit code, stdout, stderr) is the task's result.
#
#   N=200 SLOTS=2 POLL=2 TASK_SECONDS=0.2 aws-baseline.sh OUT_DIR INSTANCE_ID...
#
# Task i (1..N) runs `sleep TASK_SECONDS; echo done i`, the same command as
# the benchmark's infra template. Concurrency matches infra's slots: SLOTS
# lanes per instance, each lane running its tasks one after another (lane l
# takes tasks l+1, l+1+L, ... with L = instances x SLOTS lanes, on instance
# l mod instances), so at most SLOTS tasks are in flight per instance.
# All tasks are equally long, so this static split loses nothing against a
# shared queue.
#
# Writes OUT_DIR/t<i>.json (the last get-command-invocation answer) and
# OUT_DIR/lane-<l> ("<lane> <poll rounds> <failed tasks>"). Exit 1 if a task
# did not succeed or a call failed. AWS (default: `aws` on PATH) is the CLI.
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 OUT_DIR INSTANCE_ID..." >&2
  exit 2
fi
OUT=$1
shift
IDS=("$@")
N=${N:-200}
SLOTS=${SLOTS:-2}
POLL=${POLL:-2}
TASK_SECONDS=${TASK_SECONDS:-0.2}
AWS=${AWS:-aws}
LANES=$((${#IDS[@]} * SLOTS))
mkdir -p "$OUT"

lane() {
  local l=$1 inst=${IDS[$(($1 % ${#IDS[@]}))]} i cid st polls=0 failed=0
  for ((i = l + 1; i <= N; i += LANES)); do
    cid=$($AWS ssm send-command --instance-ids "$inst" --document-name AWS-RunShellScript \
      --parameters "{\"commands\": [\"sleep $TASK_SECONDS; echo done $i\"]}" \
      --query Command.CommandId --output text) || { failed=$((failed + 1)); continue; }
    while :; do
      sleep "$POLL"
      polls=$((polls + 1))
      # right after send-command, real SSM may answer InvocationDoesNotExist: poll again
      st=$($AWS ssm get-command-invocation --command-id "$cid" --instance-id "$inst" \
        --query Status --output text 2>/dev/null) || st=Pending
      case $st in
        Success | Failed | Cancelled | TimedOut) break ;;
      esac
    done
    $AWS ssm get-command-invocation --command-id "$cid" --instance-id "$inst" \
      --output json >"$OUT/t$i.json" || failed=$((failed + 1))
    [ "$st" = Success ] || failed=$((failed + 1))
  done
  echo "$l $polls $failed" >"$OUT/lane-$l"
  [ "$failed" -eq 0 ]
}

pids=()
for ((l = 0; l < LANES; l++)); do
  lane "$l" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
  wait "$p" || rc=1
done
exit $rc
