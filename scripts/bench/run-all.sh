#!/usr/bin/env bash
# Re-runs every benchmark and prints the figures for docs/BENCHMARKS.md.
# Release build; needs GNU parallel and GNU time (Debian packages parallel,
# time); aws-path.sh also needs curl and the emulator's
# Python packages (scripts/setup-test-deps.sh, run by it when they are missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); date: $(date -u +%F)"
RUNS=10 scripts/bench/dispatch.sh                    # on /tmp, whatever it is here
RUNS=10 DIR=/dev/shm scripts/bench/dispatch.sh       # the same on tmpfs
if [ "$(id -u)" = 0 ]; then                          # and on a fresh default ext4
  RUNS=10 FS=ext4-image scripts/bench/dispatch.sh
fi
scripts/bench/plan-throughput.sh
cargo test --release --quiet --test it scheduling_a_heterogeneous -- --nocapture 2>&1 | grep "500 tasks" || true
N=20 scripts/bench/node-cpu.sh   # node CPU per no-op step of the agent
scripts/bench/aws-path.sh   # about an hour with RUNS=3 on 2 shared cores
