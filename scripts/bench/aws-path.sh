#!/usr/bin/env bash
# The AWS path on the local emulator (tests/emulator), side by side in one run:
#
#   (a) `infra run` of N one-step tasks (`sleep TASK_SECONDS; echo done i`)
#       on NODES emulated instances x SLOTS slots;
#   (b) scripts/bench/aws-baseline.sh: the same N commands on the same
#       instances, one `aws ssm send-command` each, `aws ssm
#       get-command-invocation` every POLL s until it ends, then one more
#       get-command-invocation for the output; SLOTS tasks in flight per
#       instance, like infra's slots.
#
# Both poll every POLL seconds (infra through INFRA_POLL_SECONDS; 2 s is
# infra's default). Measured per run: whole-command wall time, AWS API calls
# by service:operation (the emulator's counter, cleared before each run),
# polling rounds, and CPU seconds of the controller (the command and its
# children, e.g. the baseline's aws CLI processes), of the "nodes" (the
# commands Run Command executed, i.e. the emulator's reaped children) and of
# the emulator itself. The first `infra run` ships the task bundle and every
# node fetches it once: it is reported apart ("cold") and not in the medians.
# Then RUNS rounds of (infra run, baseline), interleaved; medians reported.
#
#   RUNS=3 scripts/bench/aws-path.sh
#   N=200 NODES=4 SLOTS=2 POLL=2 TASK_SECONDS=0.2 RAW=target/bench/aws-path.json
#
# Uses target/release/infra as it is (run-all.sh builds it first). Needs
# python3 with the emulator's packages and the awscli (installed by
# scripts/setup-test-deps.sh when missing), curl and GNU time.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
N=${N:-200}
NODES=${NODES:-4}
SLOTS=${SLOTS:-2}
RUNS=${RUNS:-3}
POLL=${POLL:-2}
TASK_SECONDS=${TASK_SECONDS:-0.2}
RAW=${RAW:-$ROOT/target/bench/aws-path.json}
BIN=$ROOT/target/release/infra
ACCT=424242000003
PHASE=bench

[ -x "$BIN" ] || { echo "aws-path: $BIN missing (cargo build --release)" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "aws-path: needs GNU time (/usr/bin/time)" >&2; exit 2; }
if ! command -v aws >/dev/null 2>&1 || ! python3 -c 'import moto, boto3' 2>/dev/null; then
  scripts/setup-test-deps.sh
fi
# The interpreter and the aws CLI that the emulator also gives the commands
# it runs (its own interpreter folder first on PATH); this skips version
# manager shims (pyenv) that would add their own start-up time to every
# `aws` call of the baseline.
PY=$(python3 -c 'import sys; print(sys.executable)')
AWS=$(dirname "$PY")/aws
[ -x "$AWS" ] || AWS=$(command -v aws)

W=$(mktemp -d -t infra-aws-path.XXXXXX)
P=$W/proj
EMU=""
CHILD=""
APPLIED=""
cleanup() {
  set +e
  trap - EXIT INT TERM
  if [ -n "$CHILD" ] && kill -0 "$CHILD" 2>/dev/null; then
    kill -TERM -- "-$CHILD" 2>/dev/null
    wait "$CHILD" 2>/dev/null
  fi
  if [ -n "$APPLIED" ] && [ -n "$EMU" ] && kill -0 "$EMU" 2>/dev/null; then
    echo "destroying the emulated nodes" >&2
    "$BIN" -C "$P" destroy "$PHASE" --all --yes >"$W/destroy.log" 2>&1 ||
      { echo "infra destroy failed:" >&2; tail -n 20 "$W/destroy.log" >&2; }
  fi
  if [ -n "$EMU" ]; then
    kill -TERM "$EMU" 2>/dev/null
    wait "$EMU" 2>/dev/null
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# a clean AWS environment pointing at the emulator (started below)
for v in $(compgen -e | grep '^AWS_' || true); do unset "$v"; done
mkdir -p "$W/home" "$P/plans/templates" "$P/scripts" "$W/runs"
export HOME=$W/home AWS_ACCESS_KEY_ID=$ACCT AWS_SECRET_ACCESS_KEY=testing \
  AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true \
  AWS_CONFIG_FILE=$W/home/aws-config AWS_SHARED_CREDENTIALS_FILE=$W/home/aws-credentials \
  INFRA_POLL_SECONDS=$POLL

"$PY" tests/emulator/server.py --port 0 --port-file "$W/port" --state-dir "$W/state" \
  --parent-pid $$ --stdin-watch off </dev/null >"$W/emulator.out" 2>"$W/emulator.err" &
EMU=$!
for _ in $(seq 900); do
  [ -s "$W/port" ] && break
  kill -0 "$EMU" 2>/dev/null || { echo "the emulator did not start:" >&2; cat "$W/emulator.err" >&2; exit 1; }
  sleep 0.1
done
[ -s "$W/port" ] || { echo "the emulator did not start within 90 s" >&2; exit 1; }
export AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$W/port")
EMU_URL=$AWS_ENDPOINT_URL/_emulator
curl -sf -X POST -H 'Content-Type: application/json' -d "{\"account_id\": \"$ACCT\"}" "$EMU_URL/reset" >/dev/null

# the plan: N single-step tasks, NODES spot instances with SLOTS slots each
"$PY" - "$P/plans/$PHASE.json" "$N" "$NODES" "$SLOTS" <<'PYPLAN'
import json, sys
path, n, nodes, slots = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
json.dump({"phase": "bench", "name": "aws path benchmark", "project": "awsbench",
           "provider": "aws", "region": "us-east-1",
           "node_groups": {"cpu": {"instance_type": "c6i.xlarge", "count": nodes,
                                   "market": "spot", "slots": slots}},
           "layers": [{"id": "L0", "name": "short tasks",
                       "grid": {"backend": "short", "id": "bench-t{n}",
                                "factors": {"n": list(range(1, n + 1))}}}]},
          open(path, "w"), indent=1)
PYPLAN
# shell-safe: TASK_SECONDS is a number
printf '{"steps": [{"name": "main", "command": "sleep %s; echo done {{n}}"}]}\n' "$TASK_SECONDS" \
  >"$P/plans/templates/short.json.hbs"

emu_cpu() { # "utime stime cutime cstime" of the emulator, in seconds
  sed 's/.*) //' "/proc/$EMU/stat" | awk -v hz="$(getconf CLK_TCK)" '{print $12/hz, $13/hz, $14/hz, $15/hz}'
}
loadavg() { cut -d' ' -f1 /proc/loadavg; }

# measure LABEL KIND CMD...: run CMD (own process group, so that cleanup can
# stop it whole) and write the run's figures to $W/runs/LABEL.*
measure() {
  local label=$1 kind=$2
  shift 2
  local d=$W/runs/$label
  curl -sf -X DELETE "$EMU_URL/calls?account_id=$ACCT" >/dev/null
  emu_cpu >"$d.cpu0"
  loadavg >"$d.load0"
  date +%s.%N >"$d.t0"
  local rc=0
  setsid /usr/bin/time -f "%e %U %S" -o "$d.time" "$@" >"$d.out" 2>"$d.err" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=""
  date +%s.%N >"$d.t1"
  loadavg >"$d.load1"
  emu_cpu >"$d.cpu1"
  curl -sf "$EMU_URL/calls?account_id=$ACCT" >"$d.calls"
  echo "$kind" >"$d.kind"
  if [ "$rc" -ne 0 ]; then
    echo "aws-path: $label exited with $rc" >&2
    tail -n 30 "$d.err" >&2
    exit 1
  fi
  printf '  %-10s %7.1f s wall (load %s -> %s)\n' "$label" \
    "$(awk '{print $1}' "$d.time")" "$(cat "$d.load0")" "$(cat "$d.load1")" >&2
}

infra_run() { # LABEL: a fresh campaign on the same nodes (journal and results set aside)
  if [ -e "$P/.infra/$PHASE/journal.jsonl" ]; then
    local old
    old=$(mktemp -d -p "$W" old.XXXX)
    mv "$P/.infra/$PHASE/journal.jsonl" "$old/"
    [ -d "$P/results" ] && mv "$P/results" "$old/"
  fi
  measure "$1" infra "$BIN" -C "$P" run "$PHASE" all --json
  cp "$P/.infra/$PHASE/journal.jsonl" "$W/runs/$1.journal"
}

shell_run() { # LABEL
  measure "$1" shell env N="$N" SLOTS="$SLOTS" POLL="$POLL" TASK_SECONDS="$TASK_SECONDS" AWS="$AWS" \
    "$ROOT/scripts/bench/aws-baseline.sh" "$W/runs/$1.results" "${IDS[@]}"
}

echo "aws-path: $N tasks 'sleep $TASK_SECONDS', $NODES nodes x $SLOTS slots, poll ${POLL}s, $RUNS runs; $(nproc) cores, load $(loadavg)" >&2
t0=$(date +%s.%N)
"$BIN" -C "$P" apply "$PHASE" --yes >"$W/apply.out" 2>"$W/apply.err" ||
  { cat "$W/apply.err" >&2; APPLIED=1; exit 1; }
APPLIED=1
APPLY_SECONDS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b - a}')
mapfile -t IDS < <("$PY" -c 'import json, sys; [print(n["instance_id"]) for n in json.load(open(sys.argv[1]))["nodes"]]' "$P/.infra/$PHASE/aws-state.json")
[ "${#IDS[@]}" -eq "$NODES" ] || { echo "aws-path: expected $NODES nodes, got ${#IDS[@]}" >&2; exit 1; }
echo "  applied in ${APPLY_SECONDS} s: ${IDS[*]}" >&2

infra_run infra-cold
for r in $(seq "$RUNS"); do
  infra_run "infra-$r"
  shell_run "shell-$r"
done

mkdir -p "$(dirname "$RAW")"
"$PY" - "$W/runs" "$RAW" "$N" "$NODES" "$SLOTS" "$POLL" "$TASK_SECONDS" "$RUNS" "$APPLY_SECONDS" "$AWS" <<'PYSUM'
import datetime, glob, json, os, statistics, sys
runs_dir, raw, n, nodes, slots, poll, task_s, nruns, apply_s, aws = sys.argv[1:11]
n, nodes, slots, nruns = int(n), int(nodes), int(slots), int(nruns)

def rd(p):
    return open(p).read().strip()

def ts(s):  # journal timestamp -> epoch seconds
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()

runs = []
for kind_file in sorted(glob.glob(os.path.join(runs_dir, "*.kind"))):
    label = os.path.basename(kind_file)[:-5]
    b = os.path.join(runs_dir, label)
    kind = rd(kind_file)
    t0, t1 = float(rd(b + ".t0")), float(rd(b + ".t1"))
    _, cu, cs = (float(x) for x in rd(b + ".time").split())
    c0 = [float(x) for x in rd(b + ".cpu0").split()]
    c1 = [float(x) for x in rd(b + ".cpu1").split()]
    calls = json.load(open(b + ".calls"))["calls"]
    total = sum(calls.values())
    control = sum(v for k, v in calls.items() if not k.startswith("s3:"))
    r = {"label": label, "kind": kind, "started": t0, "wall_s": round(t1 - t0, 3),
         "controller_cpu_s": round(cu + cs, 2),
         "node_cpu_s": round(c1[2] + c1[3] - c0[2] - c0[3], 2),
         "emulator_cpu_s": round(c1[0] + c1[1] - c0[0] - c0[1], 2),
         "load_before": float(rd(b + ".load0")), "load_after": float(rd(b + ".load1")),
         "calls": dict(sorted(calls.items())), "calls_total": total,
         "calls_per_task": total / n, "control_calls_per_task": control / n}
    if kind == "infra":
        out = json.load(open(b + ".out"))
        assert out["summary"]["succeeded"] == n, out["summary"]
        rounds = out["api_calls"]["poll_rounds"]
        status = calls.get("ssm:ListCommandInvocations", 0)
        ev = [json.loads(l) for l in open(b + ".journal") if l.strip()]
        started = min(ts(e["ts"]) for e in ev if e["event"] == "run_started")
        finished = max(ts(e["ts"]) for e in ev if e["event"] == "run_finished")
        r.update(infra_summary=out["summary"], infra_api_calls=out["api_calls"],
                 before_first_task_s=round(started - t0, 2), after_last_task_s=round(t1 - finished, 2))
    else:
        lanes = [rd(f).split() for f in glob.glob(b + ".results/lane-*")]
        polls = [int(x[1]) for x in lanes]
        assert sum(int(x[2]) for x in lanes) == 0, "baseline tasks failed"
        ok = sum(json.load(open(f))["Status"] == "Success" for f in glob.glob(b + ".results/t*.json"))
        assert ok == n, f"{ok} of {n} baseline tasks succeeded"
        rounds = max(polls)  # lanes poll side by side: the script's rounds are its longest lane's
        status = sum(polls)  # status polls; the rest of GetCommandInvocation is one output fetch per task
        r.update(lane_poll_rounds=sorted(polls))
    r.update(poll_rounds=rounds, status_calls=status, status_calls_per_round=status / rounds,
             calls_per_round={k: round(v / rounds, 3) for k, v in sorted(calls.items())})
    runs.append(r)
runs.sort(key=lambda r: r["started"])

def med(kind, key):
    v = [r[key] for r in runs if r["kind"] == kind and not r["label"].endswith("cold")]
    return statistics.median(v)

keys = ["wall_s", "calls_per_task", "control_calls_per_task", "status_calls_per_round",
        "poll_rounds", "controller_cpu_s", "node_cpu_s", "emulator_cpu_s"]
medians = {k: {key: med(k, key) for key in keys} for k in ("infra", "shell")}
doc = {"benchmark": "aws-path", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
       "machine": {"cores": os.cpu_count(), "uname": " ".join(os.uname()[i] for i in (0, 2, 4))},
       "params": {"tasks": n, "nodes": nodes, "slots_per_node": slots, "poll_seconds": float(poll),
                  "task_command": f"sleep {task_s}; echo done <i>", "runs": nruns, "aws_cli": aws},
       "apply_seconds": float(apply_s), "medians": medians, "runs": runs}
json.dump(doc, open(raw, "w"), indent=1)

I, S = medians["infra"], medians["shell"]
cold = next(r for r in runs if r["label"] == "infra-cold")
print(f"AWS path on the emulator: {n} tasks `sleep {task_s}` on {nodes} nodes x {slots} slots "
      f"({nodes * slots} in flight), poll every {poll} s; median of {nruns} runs")
hdr = ("", "wall s", "calls/task", "ssm+ec2/task", "status calls/round", "rounds", "ctrl CPU s", "node CPU s", "emu CPU s")
fmt = "  {:<22} {:>8} {:>10} {:>12} {:>18} {:>7} {:>10} {:>10} {:>9}"
print(fmt.format(*hdr))
for name, m in (("infra run", I), ("shell (send + poll)", S)):
    print(fmt.format(name, f"{m['wall_s']:.1f}", f"{m['calls_per_task']:.2f}", f"{m['control_calls_per_task']:.2f}",
                     f"{m['status_calls_per_round']:.2f}", f"{m['poll_rounds']:.0f}", f"{m['controller_cpu_s']:.1f}",
                     f"{m['node_cpu_s']:.1f}", f"{m['emulator_cpu_s']:.1f}"))
ratio = lambda k: f"{I[k] / S[k]:.3g}x" if S[k] else "-"
print(fmt.format("infra / shell", ratio("wall_s"), ratio("calls_per_task"), ratio("control_calls_per_task"),
                 ratio("status_calls_per_round"), "-", ratio("controller_cpu_s"),
                 ratio("node_cpu_s"), ratio("emulator_cpu_s")))
print(f"  infra cold first run (ships the bundle, nodes fetch it): {cold['wall_s']:.1f} s wall, "
      f"{cold['calls_per_task']:.2f} calls/task; apply {float(apply_s):.1f} s")
for kind in ("infra", "shell"):
    last = [r for r in runs if r["kind"] == kind and r["label"] != "infra-cold"][-1]
    per = ", ".join(f"{k} {v / n:.2f}" for k, v in last["calls"].items())
    print(f"  {kind} calls per task ({last['label']}): {per}")
    per = ", ".join(f"{k} {v:.2f}" for k, v in last["calls_per_round"].items())
    print(f"  {kind} calls per round ({last['label']}, {last['poll_rounds']} rounds): {per}")
walls = lambda kind: " ".join(f"{r['wall_s']:.1f}" for r in runs if r["kind"] == kind and r["label"] != "infra-cold")
loads = " ".join(f"{r['load_before']:.1f}" for r in runs)
print(f"  walls: infra {walls('infra')}; shell {walls('shell')}; load average before each run: {loads}")
print(f"  raw numbers: {raw}")
PYSUM
