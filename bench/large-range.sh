#!/usr/bin/env bash
# Large ranges beside writes, Chorus and etcd 3.4 side by side: what a range over a large part
# of the store costs, and what it does to the writes that arrive meanwhile.
#
# For each system in turn: a 3-member cluster on loopback (fsync on), KEYS keys (default
# 100,000) of VALUE_SIZE bytes (default 1,024) written in order, then
#   1. RANGES full ranges (default 5, after one to warm up) through etcdctl against the first
#      member, one at a time: the wall time of each and the member's CPU time;
#   2. puts at RATE per second (default 2,000) from 40 clients for DURATION (default 15s),
#      alone;
#   3. the same puts while a loop of full ranges runs through etcdctl, each against the next
#      member in turn: the puts' latency, and how many ranges the loop finished.
# Prints one table (medians of step 1; latencies in ms, from each put's scheduled start).
#
# Usage: bench/large-range.sh
#        KEYS=200000 VALUE_SIZE=512 RATE=3000 bench/large-range.sh
#        CHORUS=/path/to/another/chorus bench/large-range.sh   (measure that build, which also
#                                                             serves as the load generator)
# Needs etcd and etcdctl (Debian: etcd-server, etcd-client); installs them when missing and
# this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS="${KEYS:-100000}"
VALUE_SIZE="${VALUE_SIZE:-1024}"
RATE="${RATE:-2000}"
DURATION="${DURATION:-15s}"
RANGES="${RANGES:-5}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
need_etcd etcd-server etcd-client
# The table names a build given in CHORUS by its path, this tree's by its commit.
CHORUS_LABEL="${CHORUS:-}"
need_chorus
WORK="$(mktemp -d)"
PIDS=()
trap 'stop_clusters "$WORK"' EXIT
BASE=24000
export ETCDCTL_API=3

# full_range MEMBER: every key, through etcdctl, against member MEMBER (1-3).
full_range() {
  etcdctl --endpoints "http://127.0.0.1:$((BASE + $1))" --command-timeout=120s \
    get --from-key '' >/dev/null
}

# puts NAME: the paced puts of steps 2 and 3, their JSON result in $WORK/NAME.json.
puts() {
  "$CHORUS" bench put --endpoints "$(endpoints $BASE)" --conns 4 --clients 40 --rate "$RATE" \
    --duration "$DURATION" --key-space "$KEYS" --val-size "$VALUE_SIZE" --json --no-progress \
    >"$WORK/$1.json"
}

for system in etcd chorus; do
  PIDS=()
  if [[ $system == etcd ]]; then
    start_cluster etcd "$WORK" "$BASE" etcd
  else
    start_cluster chorus "$WORK" "$BASE" "$CHORUS" serve
  fi
  wait_ready "$CHORUS" "$(endpoints $BASE)"
  "$CHORUS" bench put --endpoints "$(endpoints $BASE)" --conns 4 --clients 40 --total "$KEYS" \
    --key-space "$KEYS" --sequential-keys --val-size "$VALUE_SIZE" --no-progress >/dev/null
  full_range 1
  : >"$WORK/$system-ranges"
  for _ in $(seq "$RANGES"); do
    ticks=$(cpu_ticks "${PIDS[0]}")
    started=$(date +%s.%N)
    full_range 1
    echo "$(date +%s.%N) $started $(($(cpu_ticks "${PIDS[0]}") - ticks)) $(getconf CLK_TCK)" \
      >>"$WORK/$system-ranges"
  done
  puts "$system-alone"
  (
    n=0
    while [[ ! -e $WORK/stop ]]; do
      full_range $((n % 3 + 1)) || echo "a full range against $system failed" >&2
      n=$((n + 1))
    done
    echo "$n" >"$WORK/$system-loop"
  ) &
  loop=$!
  puts "$system-beside"
  touch "$WORK/stop"
  wait "$loop"
  rm "$WORK/stop"
  for pid in "${PIDS[@]}"; do kill "$pid"; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "${WORK:?}/${system}"?
  echo "ran $system" >&2
done
PIDS=()

python3 - "$WORK" "$KEYS" "$VALUE_SIZE" "$RATE" "$DURATION" "$(etcd --version | head -1)" \
  "${CHORUS_LABEL:-$(git rev-parse --short HEAD)}" <<'PY'
import json, os, statistics, sys
work, keys, value_size, rate, duration, etcd_version, commit = sys.argv[1:]

def ranges(system):
    walls, cpus = [], []
    for line in open(os.path.join(work, f"{system}-ranges")):
        end, start, ticks, hz = line.split()
        walls.append(float(end) - float(start))
        cpus.append(int(ticks) / int(hz))
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000

def latency(system, name):
    r = json.load(open(os.path.join(work, f"{system}-{name}.json")))
    l = r["latency"]
    return [l["p50_ms"], l["p99_ms"], l["p999_ms"], l["max_ms"]], r["requests_failed"]

loops = {s: int(open(os.path.join(work, f"{s}-loop")).read()) for s in ("etcd", "chorus")}
print(f"Chorus {commit} vs {etcd_version}; 3 members each on loopback, fsync on; "
      f"{int(keys):,} keys of {value_size} bytes; puts at {rate}/s for {duration}.")
print(f"Machine: {os.cpu_count()} cores.")
print()
print("| measure | etcd | chorus | chorus / etcd |")
print("|---|---:|---:|---:|")
rows = [("full range, wall ms (median)", *[ranges(s)[0] for s in ("etcd", "chorus")]),
        ("full range, serving member's CPU ms (median)", *[ranges(s)[1] for s in ("etcd", "chorus")])]
for name in ("alone", "beside"):
    (e, ef), (c, cf) = latency("etcd", name), latency("chorus", name)
    what = "puts alone" if name == "alone" else "puts beside full ranges"
    for label, x, y in zip(("p50", "p99", "p99.9", "max"), e, c):
        rows.append((f"{what}, {label} ms", x, y))
    if ef or cf:
        rows.append((f"{what}, failed puts", ef, cf))
for label, x, y in rows:
    ratio = f"{y / x:.2f}x" if x else "-"
    print(f"| {label} | {x:,.2f} | {y:,.2f} | {ratio} |")
print(f"| full ranges finished beside the puts | {loops['etcd']} | {loops['chorus']} | "
      f"{loops['chorus'] / max(loops['etcd'], 1):.2f}x |")
PY
