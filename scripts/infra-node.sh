#!/bin/sh
# infra-node.sh: the node side of `infra run` on AWS. POSIX sh + the aws cli.
#
# `infra` ships this file in the task bundle (s3://<bucket>/<phase>/_bundle/)
# and starts it through SSM Run Command (AWS-RunShellScript); every value it
# receives was shell-quoted by infra. Modes:
#
#   step   TASK ATTEMPT K NAME RANK DEST TIMEOUT BACKGROUND OUTPUTS COMMAND
#          run one step of a task in the task's work folder; record exit code,
#          wall time and peak memory in runtime.json; upload stdout.log,
#          stderr.log, runtime.json, the declared OUTPUTS (newline-separated,
#          relative to the work folder) and $INFRA_OUTPUT_DIR to DEST (an
#          s3:// prefix). Exits with the step's code, 124 on TIMEOUT (seconds,
#          0 = none), 175 when a spot interruption notice arrives (the runner
#          re-queues the task), 171 when the upload failed. A BACKGROUND (1)
#          step runs until `stop` and then exits 0.
#   health TASK ATTEMPT K TIMEOUT INTERVAL URL COMMAND
#          wait until URL answers 2xx (or COMMAND exits 0) while background
#          step K is still running: 0 healthy, 1 not healthy in time,
#          3 the step ended first, 175 spot interruption.
#   stop   TASK ATTEMPT K...
#          stop background steps K... of the attempt (they upload and exit).
#   reap   stop every step still running on the node (after a crash of infra)
#   setup  HASH DEST
#          run the bundle's setup.sh once per HASH (again when it changes);
#          upload its log to DEST/<instance id>.log.
#
# Where things live on the node: $INFRA_NODE_ROOT, else the emulator's
# per-instance folder $INFRA_SANDBOX_DIR, else /var/lib/infra.
set -u

EXIT_UPLOAD=171
EXIT_INTERRUPTED=175
EXIT_TIMEOUT=124

ROOT="${INFRA_NODE_ROOT:-${INFRA_SANDBOX_DIR:-/var/lib/infra}}"
IMDS="${INFRA_IMDS_URL:-http://169.254.169.254}"
INTERVAL="${INFRA_WATCH_INTERVAL:-1}"
export INFRA_SCRIPTS="$ROOT/bundle/scripts"

log() { printf 'infra-node: %s\n' "$*" >&2; }

# seconds since boot, with hundredths
now() { read -r up _ </proc/uptime && printf '%s\n' "$up"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f\n", b - a }'; }
nap() { sleep "$INTERVAL" 2>/dev/null || sleep 1; }

TOKEN=""
TOKEN_AT=0
spot_notice() {
  t=$(date +%s)
  if [ -z "$TOKEN" ] || [ $((t - TOKEN_AT)) -gt 240 ]; then
    TOKEN=$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token" 2>/dev/null) || TOKEN=""
    TOKEN_AT=$t
  fi
  curl -sf -m 2 -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS/latest/meta-data/spot/instance-action" >/dev/null 2>&1
}

instance_id() {
  if [ -n "${INFRA_INSTANCE_ID:-}" ]; then
    printf '%s\n' "$INFRA_INSTANCE_ID"
  else
    t=$(curl -sf -m 2 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$IMDS/latest/api/token" 2>/dev/null)
    curl -sf -m 2 -H "X-aws-ec2-metadata-token: $t" "$IMDS/latest/meta-data/instance-id" 2>/dev/null || hostname
  fi
}

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  ')"; }

# gone PID: the process has exited (a zombie or no more)
gone() {
  [ -r "/proc/$1/stat" ] || return 0
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" = Z ]
}

# kill_group PID: TERM the process group, KILL what is left after 2 s
kill_group() {
  kill -TERM "-$1" 2>/dev/null || kill -TERM "$1" 2>/dev/null
  i=0
  while [ $i -lt 20 ] && ! gone "$1"; do sleep 0.1 2>/dev/null || sleep 1; i=$((i + 1)); done
  kill -KILL "-$1" 2>/dev/null || kill -KILL "$1" 2>/dev/null
}

upload() { # DIR DEST
  [ -d "$1" ] || return 0
  aws s3 cp --recursive --only-show-errors "$1" "$2/"
}

# watch_step PID RUN DEADLINE: stop the step when asked to ($RUN/stop), at
# DEADLINE (seconds since boot, empty for none) or on a spot interruption
# notice; the reason goes to $RUN/why before the step's group is killed
watch_step() {
  trap - TERM INT HUP
  while ! [ -f "$2/rc" ]; do
    why=""
    if [ -f "$2/stop" ]; then
      why=stopped
    elif [ -n "$3" ] && awk -v d="$3" -v n="$(now)" 'BEGIN { exit !(n >= d) }'; then
      why=timeout
    elif spot_notice; then
      why=interrupted
    fi
    if [ -n "$why" ]; then
      [ -f "$2/rc" ] && return 0 # it ended on its own meanwhile
      printf '%s\n' "$why" >"$2/why"
      kill_group "$1"
      return 0
    fi
    nap
  done
}

cmd_step() {
  task=$1 attempt=$2 k=$3 name=$4 rank=$5 dest=$6 timeout=$7 bg=$8 outputs=$9
  shift 9
  command=$1
  work="$ROOT/work/$task/$attempt"
  run="$ROOT/run/$task/$attempt/$k"
  up="$run/upload"
  stepdir="$up/steps/$k"
  export INFRA_WORK_DIR="$work" INFRA_OUTPUT_DIR="$ROOT/out/$task/$attempt/$rank"
  if [ ! -d "$work" ]; then
    # the first step of this attempt on this node: earlier attempts' folders go
    for old in "$ROOT/work/$task/"* "$ROOT/run/$task/"* "$ROOT/out/$task/"*; do
      [ "${old##*/}" = "$attempt" ] || rm -rf "$old"
    done
  fi
  rm -rf "$run"
  mkdir -p "$work" "$stepdir" "$up/files" "$INFRA_OUTPUT_DIR" || exit 1
  printf '%s\n' "$command" >"$run/command.sh"
  shell=bash
  command -v bash >/dev/null 2>&1 || shell=sh
  started=$(now)
  started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  # the step in its own session (process group), so that it can be stopped
  # whole; its exit code lands in $run/rc, its peak RSS in $run/maxrss
  if [ -x /usr/bin/time ]; then
    setsid sh -c 'cd "$1" || exit 1; /usr/bin/time -f %M -o "$2" "$3" "$4"; echo $? >"$5.tmp"; mv "$5.tmp" "$5"' \
      infra-step "$work" "$run/maxrss" "$shell" "$run/command.sh" "$run/rc" >"$stepdir/stdout.log" 2>"$stepdir/stderr.log" </dev/null &
  else
    setsid sh -c 'cd "$1" || exit 1; "$3" "$4"; echo $? >"$5.tmp"; mv "$5.tmp" "$5"' \
      infra-step "$work" "" "$shell" "$run/command.sh" "$run/rc" >"$stepdir/stdout.log" 2>"$stepdir/stderr.log" </dev/null &
  fi
  pid=$!
  echo "$pid" >"$run/pid"
  deadline=""
  if [ "$timeout" -gt 0 ] 2>/dev/null; then
    deadline=$(awk -v a="$started" -v t="$timeout" 'BEGIN { printf "%.2f\n", a + t }')
  fi
  # The wrapper waits for the step itself (it returns the moment the step
  # ends); a watcher beside it stops the step on `stop`, on its timeout or on
  # a spot interruption notice, and says which in $run/why.
  watch_step "$pid" "$run" "$deadline" &
  watcher=$!
  # SSM may TERM the wrapper (cancel, timeout): the step goes with it
  trap 'kill "$watcher" 2>/dev/null; kill_group "$pid"; exit 143' TERM INT HUP
  wait "$pid" 2>/dev/null
  waited=$?
  kill "$watcher" 2>/dev/null
  wait "$watcher" 2>/dev/null
  why=$(cat "$run/why" 2>/dev/null)
  case "$why" in
    stopped) status=stopped code=0 ;;
    timeout) status=timeout code=$EXIT_TIMEOUT ;;
    interrupted) status=interrupted code=$EXIT_INTERRUPTED ;;
    *)
      status=exited
      # no exit code written: the step's shell itself was killed
      code=$(cat "$run/rc" 2>/dev/null)
      [ -n "$code" ] || code=$waited
      ;;
  esac
  wall=$(elapsed "$started")
  peak=0
  if [ -s "$run/maxrss" ]; then
    peak=$(tail -n 1 "$run/maxrss" | tr -cd '0-9')
    [ -n "$peak" ] || peak=0
  fi
  # declared outputs (from whichever rank has them) and the output folder
  printf '%s\n' "$outputs" | while IFS= read -r o; do
    [ -n "$o" ] || continue
    if [ -e "$work/$o" ]; then
      mkdir -p "$(dirname "$up/files/$o")"
      cp -R "$work/$o" "$up/files/$o"
    fi
  done
  cp -R "$INFRA_OUTPUT_DIR/." "$up/files/" 2>/dev/null
  {
    printf '{"task": %s, "attempt": %s, "step": %s, "index": %s, "rank": %s, ' "$(json_str "$task")" "$attempt" "$(json_str "$name")" "$k" "$rank"
    printf '"status": "%s", "exit_code": %s, "wall_seconds": %s, "peak_rss_kb": %s, ' "$status" "$code" "$wall" "$peak"
    printf '"background": %s, "started": "%s", "ended": "%s", "instance_id": %s}\n' \
      "$([ "$bg" = 1 ] && echo true || echo false)" "$started_at" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(json_str "$(instance_id)")"
  } >"$stepdir/runtime.json"
  if ! upload "$up" "$dest"; then
    log "cannot upload the results of step $name to $dest"
    exit $EXIT_UPLOAD
  fi
  echo "infra-node: step $name $status with code $code after ${wall}s"
  exit "$code"
}

cmd_health() {
  task=$1 attempt=$2 k=$3 timeout=$4 interval=$5 url=$6 command=$7
  run="$ROOT/run/$task/$attempt/$k"
  shell=bash
  command -v bash >/dev/null 2>&1 || shell=sh
  started=$(now)
  while :; do
    if [ -f "$run/rc" ]; then
      echo "infra-node: background step $k ended (code $(cat "$run/rc")) before it became healthy"
      exit 3
    fi
    if [ -n "$url" ]; then
      curl -sf -m 5 -o /dev/null "$url" && { echo "infra-node: healthy ($url)"; exit 0; }
    else
      ( cd "$ROOT/work/$task/$attempt" 2>/dev/null; timeout 10 "$shell" -c "$command" ) >/dev/null 2>&1 && { echo "infra-node: healthy"; exit 0; }
    fi
    if spot_notice; then
      exit $EXIT_INTERRUPTED
    fi
    if awk -v a="$started" -v n="$(now)" -v t="$timeout" 'BEGIN { exit !(n - a >= t) }'; then
      echo "infra-node: not healthy after ${timeout}s"
      exit 1
    fi
    sleep "$interval" 2>/dev/null || sleep 1
  done
}

cmd_stop() {
  task=$1 attempt=$2
  shift 2
  for k in "$@"; do
    d="$ROOT/run/$task/$attempt/$k"
    [ -d "$d" ] && : >"$d/stop"
  done
  exit 0
}

# every step still running on this node (left by an `infra run` that died):
# stop it (its wrapper, if alive, uploads and exits) and kill its group
cmd_reap() {
  n=0
  for p in "$ROOT"/run/*/*/*/pid; do
    [ -f "$p" ] || continue
    d=$(dirname "$p")
    [ -f "$d/rc" ] && continue
    : >"$d/stop"
    kill_group "$(cat "$p")"
    n=$((n + 1))
  done
  echo "infra-node: stopped $n step(s)"
  exit 0
}

cmd_setup() {
  hash=$1 dest=$2
  marker="$ROOT/setup.done"
  # one setup at a time on a node: the setup of an `infra apply` that died
  # goes on running, and the next apply (or run) waits for it instead of
  # running it a second time beside it (package managers' locks, clones)
  if command -v flock >/dev/null 2>&1; then
    exec 9>>"$ROOT/setup.lock"
    flock 9
  fi
  if [ "$(cat "$marker" 2>/dev/null)" = "$hash" ]; then
    echo "infra-node: setup $hash already done"
    exit 0
  fi
  mkdir -p "$ROOT/setup"
  shell=bash
  command -v bash >/dev/null 2>&1 || shell=sh
  ( cd "$ROOT/setup" && "$shell" -e "$ROOT/bundle/setup.sh" 9>&- ) >"$ROOT/setup.log" 2>&1
  code=$?
  aws s3 cp --only-show-errors "$ROOT/setup.log" "$dest/$(instance_id).log" || log "cannot upload the setup log to $dest"
  if [ $code -eq 0 ]; then
    printf '%s\n' "$hash" >"$marker"
  else
    tail -n 20 "$ROOT/setup.log" >&2
  fi
  exit $code
}

mode=${1:-}
[ $# -gt 0 ] && shift
case "$mode" in
  step) cmd_step "$@" ;;
  health) cmd_health "$@" ;;
  stop) cmd_stop "$@" ;;
  setup) cmd_setup "$@" ;;
  reap) cmd_reap ;;
  *) log "unknown mode '$mode' (step, health, stop, reap, setup)"; exit 2 ;;
esac
