#!/usr/bin/env bash
# Re-runs every benchmark and prints the figures for docs/BENCHMARKS.md.
# Release build; needs GNU parallel, hyperfine and GNU time (Debian packages
# parallel, hyperfine, time); aws-path.sh also needs curl and the emulator's
# Python packages (scripts/setup-test-deps.sh, run by it when they are missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); date: $(date -u +%F)"
scripts/bench/dispatch.sh
DIR=/dev/shm scripts/bench/dispatch.sh   # the same on tmpfs
scripts/bench/plan-throughput.sh
cargo test --release --quiet --test it scheduling_a_heterogeneous -- --nocapture 2>&1 | grep "500 tasks" || true
scripts/bench/aws-path.sh   # about an hour with RUNS=3 on 2 shared cores
