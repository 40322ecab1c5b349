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
BUG_SEEDS_MAX="${BUG_SEEDS_MAX:-2000}"
INJECTED_BUGS=(double-vote commit-old-term stale-lease-read forget-vote-on-restart)

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo test (workspace)"
cargo test --workspace

step "cargo test chorus-raft with the bug-injection feature compiled in (no bug selected)"
cargo test -p chorus-raft --features inject-bugs

step "build the simulator (release, with bug injection compiled in)"
cargo build --release -p chorus-sim --features inject-bugs
SIM=target/release/chorus-sim

step "simulator: ${SIM_SEEDS} seeds, no injected bug"
"$SIM" --seeds "$SIM_SEEDS"

for bug in "${INJECTED_BUGS[@]}"; do
  step "simulator: --inject-bug ${bug} must be caught within ${BUG_SEEDS_MAX} seeds"
  set +e
  out=$("$SIM" --seeds "$BUG_SEEDS_MAX" --inject-bug "$bug" 2>&1)
  code=$?
  set -e
  printf '%s\n' "$out" | tail -n 5
  summary=$(printf '%s\n' "$out" | grep -E '^seeds=[0-9]+ violations=[0-9]+$' | tail -n 1 || true)
  violations=${summary##*violations=}
  if [[ $code -eq 0 || -z "$summary" || "${violations:-0}" -eq 0 ]]; then
    echo "FAIL: injected bug '${bug}' was not caught (exit ${code}, summary '${summary}')" >&2
    exit 1
  fi
  echo "caught: ${bug}"
done

step "all checks passed"
