#!/usr/bin/env bash
# The whole Chorus test suite: formatting, lints, unit/property/integration tests, the
# deterministic simulator over many seeds, and proof that its checkers catch injected bugs.
#
# Usage: scripts/test.sh                  (what CI runs)
#        SIM_SEEDS=10000 scripts/test.sh  (a longer simulator run)
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS="${SIM_SEEDS:-500}"
# Each injected bug must be caught within this many seeds (issue: at most 2,000).
SIM_BUG_SEEDS="${SIM_BUG_SEEDS:-2000}"

step() { printf '\n==> %s\n' "$*"; }

# The multi-process tests drive a real `chorus serve` with etcd's own client, etcdctl 3.4 from
# Debian's etcd-client package. Install it when it is missing and we may (root with apt-get);
# otherwise those tests fail and say so (CHORUS_SKIP_ETCDCTL=1 skips them deliberately).
if ! command -v etcdctl >/dev/null 2>&1 && [[ "${CHORUS_SKIP_ETCDCTL:-0}" != 1 ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    step "installing etcdctl (Debian package etcd-client)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client >/dev/null
  else
    echo "etcdctl is missing: install Debian's etcd-client, or set CHORUS_SKIP_ETCDCTL=1" >&2
  fi
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (workspace)"
cargo test --workspace

# Compatibility: etcd's own Rust client (etcd-client) against a real `chorus serve`, and the
# differential test against real etcd 3.4 (docs/compat.md). compat/ is a separate crate whose
# build needs a `protoc`; protox (installed with cargo) stands in for it. It shares this
# workspace's target directory, so dependencies of the same version and features compile once.
# CHORUS_SKIP_COMPAT=1 skips the step (machines without apt-get or root);
# The API tests also run against etcd itself, which proves they test what etcd does
# (COMPAT_AGAINST_ETCD=0 leaves that out).
if [[ "${CHORUS_SKIP_COMPAT:-0}" != 1 ]]; then
  step "compat: etcd-server and protox"
  ETCD_BIN="${ETCD_BIN:-/usr/bin/etcd}"
  if [[ ! -x "$ETCD_BIN" ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    else
      echo "etcd is missing: install Debian's etcd-server, or set CHORUS_SKIP_COMPAT=1" >&2
      exit 1
    fi
  fi
  PROTOX_BIN="$(command -v protox || echo "${CARGO_HOME:-$HOME/.cargo}/bin/protox")"
  if [[ ! -x "$PROTOX_BIN" ]]; then
    cargo install protox --features bin --locked --quiet
    PROTOX_BIN="${CARGO_HOME:-$HOME/.cargo}/bin/protox"
  fi
  compat_start=$SECONDS
  step "compat: build chorus"
  cargo build --bin chorus
  target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
  compat_env=(env CARGO_TARGET_DIR="$target_dir" PROTOC="$PROTOX_BIN"
    CHORUS_BIN="$target_dir/debug/chorus" ETCD_BIN="$ETCD_BIN")
  step "compat: etcd-client against chorus, and the differential test against etcd 3.4"
  (cd compat && cargo fmt -- --check && "${compat_env[@]}" cargo test --locked)
  if [[ "${COMPAT_AGAINST_ETCD:-1}" == 1 ]]; then
    step "compat: the same API tests against etcd 3.4"
    (cd compat && "${compat_env[@]}" COMPAT_TARGET=etcd cargo test --locked --test api)
  fi
  echo "compat step took $((SECONDS - compat_start))s"
fi

step "cargo test chorus-raft with the bug-injection feature compiled in (no bug selected)"
cargo test -p chorus-raft --features inject-bugs

step "simulator: ${SIM_SEEDS} seeds, then each injected bug caught within ${SIM_BUG_SEEDS} seeds"
SIM_SEEDS="$SIM_SEEDS" SIM_BUG_SEEDS="$SIM_BUG_SEEDS" bash crates/sim/ci.sh

step "all checks passed"
