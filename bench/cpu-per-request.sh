#!/usr/bin/env bash
# CPU time the three members of a cluster spend per request, for Chorus or etcd: a steadier
# measure than requests per second on a machine whose cores the load generator shares, because
# it does not depend on how the scheduler splits the cores between the two.
#
# Usage: bench/cpu-per-request.sh chorus|etcd [chorus bench arguments]
#        bench/cpu-per-request.sh chorus put --conns 30 --clients 300 --total 80000   (default)
#        CHORUS=/path/to/another/chorus bench/cpu-per-request.sh chorus   (compare two builds)
# Prints the bench's throughput and latency, then the members' user+system CPU per 1,000
# requests, and their read/write syscalls and context switches per request.
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM="${1:?usage: $0 chorus|etcd [bench arguments]}"
shift
ARGS=("$@")
if [[ ${#ARGS[@]} -eq 0 ]]; then
  ARGS=(put --conns 30 --clients 300 --total 80000)
fi
if [[ -z "${CHORUS:-}" ]]; then
  cargo build --release --quiet
  CHORUS="$PWD/target/release/chorus"
fi
case "$SYSTEM" in
  chorus) SERVER=("$CHORUS" serve --log-level warn) ;;
  etcd) SERVER=(etcd) ;;
  *) echo "unknown system $SYSTEM (chorus or etcd)" >&2; exit 1 ;;
esac

# Below the ephemeral port range, as bench/compare-etcd.sh.
BASE=24000
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cluster=""
for i in 1 2 3; do cluster+="m$i=http://127.0.0.1:$((BASE + 10 + i)),"; done
for i in 1 2 3; do
  "${SERVER[@]}" --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "http://127.0.0.1:$((BASE + i))" \
    --advertise-client-urls "http://127.0.0.1:$((BASE + i))" \
    --listen-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((BASE + 10 + i))" \
    --initial-cluster "${cluster%,}" --initial-cluster-token cpu \
    --initial-cluster-state new >"$WORK/m$i.log" 2>&1 &
  PIDS+=($!)
done
EPS="http://127.0.0.1:$((BASE + 1)),http://127.0.0.1:$((BASE + 2)),http://127.0.0.1:$((BASE + 3))"
tries=0
until "$CHORUS" bench put --endpoints "$EPS" --total 1 --no-progress >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [[ $tries -gt 100 ]]; then echo "the cluster did not become ready" >&2; exit 1; fi
  sleep 0.2
done

# sum FIELD PIDS...: user+system clock ticks, read/write syscalls, or context switches.
sum() {
  local what=$1 total=0 pid n stat
  shift
  for pid in "$@"; do
    case "$what" in
      cpu) read -ra stat <"/proc/$pid/stat"; n=$((stat[13] + stat[14])) ;;
      syscalls) n=$(awk '/^sysc(r|w):/ { s += $2 } END { print s }' "/proc/$pid/io") ;;
      switches) n=$(cat /proc/"$pid"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }') ;;
    esac
    total=$((total + n))
  done
  echo "$total"
}

cpu0=$(sum cpu "${PIDS[@]}"); sys0=$(sum syscalls "${PIDS[@]}"); sw0=$(sum switches "${PIDS[@]}")
"$CHORUS" bench "${ARGS[@]}" --endpoints "$EPS" --no-progress --json >"$WORK/bench.json"
cpu1=$(sum cpu "${PIDS[@]}"); sys1=$(sum syscalls "${PIDS[@]}"); sw1=$(sum switches "${PIDS[@]}")

python3 - "$WORK/bench.json" "$SYSTEM" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" \
  "$((sys1 - sys0))" "$((sw1 - sw0))" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
system, ticks, hz, syscalls, switches = sys.argv[2], *map(int, sys.argv[3:])
ok = report["requests_ok"]
latency = report["latency"]
print(f"{system}: {ok} requests ({report['requests_failed']} failed), "
      f"{report['throughput']:.0f} req/s, "
      f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms")
print(f"members' CPU per 1,000 requests: {ticks * 1000 / hz * 1000 / ok:.1f} ms; "
      f"per request: {syscalls / ok:.2f} read/write syscalls, {switches / ok:.2f} context switches")
EOF
