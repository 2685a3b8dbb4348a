#!/bin/sh
# Build Linux binaries of infra for the nodes (the node agent is the same
# binary: `infra node ...`), for x86_64 and/or aarch64 node groups:
#
#   scripts/build-node-binaries.sh [x86_64|aarch64|all]    (default: all)
#
# Output: target/node/<arch>/infra. Point infra at them with
#   export INFRA_NODE_BINARY_X86_64=$PWD/target/node/x86_64/infra
#   export INFRA_NODE_BINARY_AARCH64=$PWD/target/node/aarch64/infra
# (On a Linux x86_64 machine the running `infra` itself serves x86_64 nodes
# when its C library is not newer than the nodes'; this build is static.)
#
# How: cargo-zigbuild (crates.io) with zig as the cross linker (the
# `ziglang` package on PyPI), for the static musl targets. The first run
# installs both and the Rust standard library of the target (rustup); each
# step says what failed. Without rustup's musl standard library (no access
# to static.rust-lang.org), x86_64 falls back to a glibc 2.17 build, which
# runs on every Linux distribution of the last ten years.
set -eu

cd "$(dirname "$0")/.."
want=${1:-all}
case "$want" in
  x86_64|aarch64) archs=$want ;;
  all) archs="x86_64 aarch64" ;;
  *) echo "usage: $0 [x86_64|aarch64|all]" >&2; exit 2 ;;
esac

say() { printf 'build-node-binaries: %s\n' "$*" >&2; }

if ! python3 -m ziglang version >/dev/null 2>&1; then
  say "installing zig (pip install ziglang)"
  python3 -m pip install --quiet ziglang || { say "cannot install ziglang from PyPI"; exit 1; }
fi
# cargo-zigbuild finds zig through python3 -m ziglang when no zig is on PATH
if ! cargo zigbuild --help >/dev/null 2>&1; then
  say "installing cargo-zigbuild (cargo install cargo-zigbuild --locked)"
  cargo install --locked cargo-zigbuild || { say "cannot install cargo-zigbuild from crates.io"; exit 1; }
fi

failed=0
for arch in $archs; do
  target="$arch-unknown-linux-musl"
  if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    say "adding the Rust standard library for $target (rustup target add $target)"
    rustup target add "$target" >/dev/null 2>&1 || target=""
  fi
  if [ -z "$target" ]; then
    if [ "$arch" = x86_64 ] && [ "$(uname -m)" = x86_64 ]; then
      target="x86_64-unknown-linux-gnu.2.17"
      say "no musl standard library for $arch: building against glibc 2.17 instead ($target)"
    else
      say "no Rust standard library for $arch-unknown-linux-musl (rustup target add failed: is static.rust-lang.org reachable?); skipping $arch"
      failed=1
      continue
    fi
  fi
  say "building $arch ($target)"
  if ! cargo zigbuild --release --locked --bin infra --target "$target"; then
    say "the $arch build failed"
    failed=1
    continue
  fi
  dir="target/${target%.2.17}/release"
  mkdir -p "target/node/$arch"
  cp "$dir/infra" "target/node/$arch/infra"
  say "target/node/$arch/infra ($(wc -c <"target/node/$arch/infra") bytes; export INFRA_NODE_BINARY_$(echo "$arch" | tr a-z A-Z)=$PWD/target/node/$arch/infra)"
done
exit $failed
