#!/usr/bin/env bash
# The simulator's CI checks: a clean run of many seeds (mixed storage modes, then all on the WAL),
# then proof that each injected bug of the core is caught within 2,000 seeds. Run from anywhere;
# respects CARGO_TARGET_DIR.
#   SIM_SEEDS      seeds of the clean run (default 500)
#   SIM_BUG_SEEDS  seeds allowed to catch each injected bug (default 2000)
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=${SIM_SEEDS:-500}
bug_seeds=${SIM_BUG_SEEDS:-2000}
target=${CARGO_TARGET_DIR:-target}

# One build serves both runs: the feature only adds the switch, which stays off without
# --inject-bug. Server builds never enable it (it is off by default in chorus-raft).
cargo build --release -p chorus-sim --features inject-bugs
sim="$target/release/chorus-sim"

echo "== chorus-sim: $seeds seeds"
"$sim" --seeds "$seeds"

# The default run draws the storage mode per seed; this one puts every node on the real WAL and a
# faulty disk (crashes, torn writes, bit flips, failed fsyncs).
echo "== chorus-sim: $seeds seeds, --storage wal"
"$sim" --seeds "$seeds" --storage wal

status=0
for bug in double-vote commit-old-term stale-lease-read forget-vote-on-restart; do
    echo "== chorus-sim: --inject-bug $bug (must be caught within $bug_seeds seeds)"
    log=$(mktemp)
    set +e
    "$sim" --seeds "$bug_seeds" --inject-bug "$bug" >"$log" 2>&1
    rc=$?
    set -e
    tail -n 2 "$log"
    if [ "$rc" -eq 1 ] && grep -q "caught by seed" "$log"; then
        echo "ok: $bug caught"
    else
        echo "FAILED: $bug not caught (exit $rc); full output:"
        cat "$log"
        status=1
    fi
    rm -f "$log"
done
exit "$status"
