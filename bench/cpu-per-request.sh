#!/usr/bin/env bash
# CPU time the three members of a cluster spend per request, for Chorus or etcd: a steadier
# measure than requests per second on a machine whose cores the load generator shares, because
# it does not depend on how the scheduler splits the cores between the two.
#
# Usage: bench/cpu-per-request.sh chorus|etcd [chorus bench arguments]
#        bench/cpu-per-request.sh chorus put --conns 30 --clients 300 --total 80000   (default)
#        CHORUS=/path/to/another/chorus bench/cpu-per-request.sh chorus   (compare two builds)
#        GENERATOR=/path/to/a/chorus ...   (the load generator from another build than the servers)
# Prints the bench's throughput and latency, then the members' user+system CPU per 1,000
# requests, their read/write syscalls and context switches per request, the load generator's
# own CPU per 1,000 requests, and the ratio of the two: the steadiest figure to compare two
# builds by, on a machine whose speed drifts from run to run (see docs/performance.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

SYSTEM="${1:?usage: $0 chorus|etcd [bench arguments]}"
shift
ARGS=("$@")
if [[ ${#ARGS[@]} -eq 0 ]]; then
  ARGS=(put --conns 30 --clients 300 --total 80000)
fi
need_chorus
case "$SYSTEM" in
  chorus) SERVER=("$CHORUS" serve) ;;
  etcd) SERVER=(etcd) ;;
  *) echo "unknown system $SYSTEM (chorus or etcd)" >&2; exit 1 ;;
esac

# Below the ephemeral port range, as bench/compare-etcd.sh.
BASE=24000
WORK="$(mktemp -d)"
PIDS=()
trap 'stop_clusters "$WORK"' EXIT
start_cluster m "$WORK" "$BASE" "${SERVER[@]}"
EPS=$(endpoints "$BASE")
wait_ready "$CHORUS" "$EPS"

# sum FIELD PIDS...: user+system clock ticks, read/write syscalls, or context switches.
sum() {
  local what=$1 total=0 pid n
  shift
  for pid in "$@"; do
    case "$what" in
      cpu) n=$(cpu_ticks "$pid") ;;
      syscalls) n=$(awk '/^sysc(r|w):/ { s += $2 } END { print s }' "/proc/$pid/io") ;;
      switches) n=$(cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }') ;;
    esac
    total=$((total + n))
  done
  echo "$total"
}

cpu0=$(sum cpu "${PIDS[@]}"); sys0=$(sum syscalls "${PIDS[@]}"); sw0=$(sum switches "${PIDS[@]}")
/usr/bin/time -f "%U %S" -o "$WORK/bench.time" \
  "${GENERATOR:-$CHORUS}" bench "${ARGS[@]}" --endpoints "$EPS" --no-progress --json >"$WORK/bench.json"
cpu1=$(sum cpu "${PIDS[@]}"); sys1=$(sum syscalls "${PIDS[@]}"); sw1=$(sum switches "${PIDS[@]}")

python3 - "$WORK/bench.json" "$WORK/bench.time" "$SYSTEM" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" \
  "$((sys1 - sys0))" "$((sw1 - sw0))" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
bench_cpu_s = sum(map(float, open(sys.argv[2]).read().split()[-2:]))
system, ticks, hz, syscalls, switches = sys.argv[3], *map(int, sys.argv[4:])
ok = report["requests_ok"]
latency = report["latency"]
print(f"{system}: {ok} requests ({report['requests_failed']} failed), "
      f"{report['throughput']:.0f} req/s, "
      f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms")
members_ms = ticks * 1000 / hz * 1000 / ok
generator_ms = bench_cpu_s * 1000 * 1000 / ok
print(f"members' CPU per 1,000 requests: {members_ms:.1f} ms; "
      f"per request: {syscalls / ok:.2f} read/write syscalls, {switches / ok:.2f} context switches")
print(f"load generator's CPU per 1,000 requests: {generator_ms:.1f} ms")
# The generator does the same work per request whatever the members do, so its CPU per request
# measures how fast the machine ran during this run; the ratio cancels that out.
print(f"members' CPU relative to the load generator's: {members_ms / generator_ms:.3f}")
EOF
