#!/usr/bin/env bash
# Side-by-side comparison of Chorus and etcd 3.4 on this machine: one 3-member cluster of each
# on loopback, both fsyncing every commit (their defaults), the same load generator
# (`chorus bench`) and the same workloads against each, one table with both results and their
# ratios, and the machine they ran on.
#
# Usage: bench/compare-etcd.sh                 (every workload, 15 s each)
#        DURATION=30s bench/compare-etcd.sh    (longer runs)
#        WORKLOADS="put range" bench/compare-etcd.sh
#        MEMORY_KEYS=1000000 bench/compare-etcd.sh   (also: resident memory after writing that
#                                                     many 256-byte values to each)
#        KEEP_LOGS=DIR bench/compare-etcd.sh   (keeps the members' logs and each workload's
#                                               JSON result in DIR; the workloads' times in
#                                               UTC are printed, to find them in the logs)
#        SERVER_CPUS=0 GENERATOR_CPUS=1 bench/compare-etcd.sh   (pins the six members to the
#                                               first CPU list and the load generator to the
#                                               second, with taskset, so that the generator
#                                               does not take the servers' cores)
# The `-paced` workloads (`put-paced`, `range-paced`) offer both systems the same load: a fixed
# rate of PACED_FRACTION (default 0.8) times the throughput etcd reached in this run's unpaced
# workload of the same name, which must run first. Their latency is measured from each
# request's scheduled start, so it compares the two at the same offered load rather than each
# at its own saturation.
# Installs etcd 3.4 (Debian package etcd-server) when it is missing and this runs as root.
# Writes the table to stdout and to $OUT (default: bench/results/latest.md).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-15s}"
WORKLOADS="${WORKLOADS:-put put-paced range range-paced range-serializable put-1 range-1 txn-cas txn-read mixed watch lease}"
export PACED_FRACTION="${PACED_FRACTION:-0.8}"
MEMORY_KEYS="${MEMORY_KEYS:-0}"
OUT="${OUT:-bench/results/latest.md}"

# shellcheck source=bench/lib.sh
source bench/lib.sh
need_etcd etcd-server

if [[ -n "${SERVER_CPUS:-}${GENERATOR_CPUS:-}" && ( -z "${SERVER_CPUS:-}" || -z "${GENERATOR_CPUS:-}" ) ]]; then
  echo "SERVER_CPUS and GENERATOR_CPUS go together (taskset CPU lists, e.g. 0 and 1)" >&2
  exit 1
fi
# The commands that run the members and the load generator: pinned when asked. Go's runtime
# and tokio both size their thread pools by the CPUs a process may run on, so both systems
# adapt to the pinning alike.
SERVER_PIN=()
GENERATOR_PIN=()
if [[ -n "${SERVER_CPUS:-}" ]]; then
  SERVER_PIN=(taskset -c "$SERVER_CPUS")
  GENERATOR_PIN=(taskset -c "$GENERATOR_CPUS")
fi

cargo build --release --quiet
CHORUS="$PWD/target/release/chorus"
WORK="$(mktemp -d)"
PIDS=()
trap 'stop_clusters "$WORK"' EXIT

# Below Linux's ephemeral range (32768-60999): a port in it can be taken by an outgoing
# connection (a member dialing another) before the server that wants it binds it.
ETCD_BASE=22000
CHORUS_BASE=23000
start_cluster etcd "$WORK" "$ETCD_BASE" "${SERVER_PIN[@]}" etcd
ETCD_PIDS=("${PIDS[@]}")
start_cluster chorus "$WORK" "$CHORUS_BASE" "${SERVER_PIN[@]}" "$CHORUS" serve
CHORUS_PIDS=("${PIDS[@]:3}")
ETCD_EPS=$(endpoints $ETCD_BASE)
CHORUS_EPS=$(endpoints $CHORUS_BASE)
wait_ready "$CHORUS" "$ETCD_EPS"
wait_ready "$CHORUS" "$CHORUS_EPS"

# The options of each workload (same for both systems).
workload_args() {
  case $1 in
    put) echo "put --conns 30 --clients 300" ;;
    range) echo "range --conns 30 --clients 300" ;;
    range-serializable) echo "range-serializable --conns 30 --clients 300" ;;
    put-1) echo "put --conns 1 --clients 1" ;;
    range-1) echo "range --conns 1 --clients 1" ;;
    txn-cas) echo "txn-cas --conns 10 --clients 100 --key-space 1000" ;;
    txn-read) echo "txn-read --conns 30 --clients 300" ;;
    mixed) echo "mixed --conns 30 --clients 300 --read-ratio 0.9" ;;
    watch) echo "watch --conns 10 --clients 10 --watchers 100 --rate 1000" ;;
    lease) echo "lease --conns 10 --clients 100" ;;
    *-paced) echo "$(workload_args "${1%-paced}") --rate $(paced_rate "${1%-paced}")" ;;
    *) echo "unknown workload $1" >&2; exit 1 ;;
  esac
}

# paced_rate WORKLOAD: PACED_FRACTION of the throughput etcd reached in WORKLOAD in this run.
paced_rate() {
  local measured="$WORK/etcd-$1.json"
  if [[ ! -s $measured ]]; then
    echo "workload $1-paced needs $1 to run before it (WORKLOADS=\"$1 $1-paced\")" >&2
    exit 1
  fi
  python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))
if "failed" in r or not r.get("throughput"):
    sys.exit("the unpaced etcd run failed: no rate to pace at")
print(round(r["throughput"] * float(sys.argv[2])))' "$measured" "$PACED_FRACTION"
}

for w in $WORKLOADS; do
  args=$(workload_args "$w")
  for system in etcd chorus; do
    eps=$ETCD_EPS members=("${ETCD_PIDS[@]}")
    [[ $system == chorus ]] && eps=$CHORUS_EPS members=("${CHORUS_PIDS[@]}")
    # The members' CPU time and the load generator's, per request: on a machine whose cores
    # the load generator shares, throughput alone depends on how the scheduler splits them.
    base=$ETCD_BASE
    [[ $system == chorus ]] && base=$CHORUS_BASE
    scrape_wal_fsync "$base" >"$WORK/$system-$w.fsync-before"
    ticks=$(cpu_ticks "${members[@]}")
    started=$(date -u +%T.%3N)
    # shellcheck disable=SC2046
    if ! /usr/bin/time -f "%U %S" -o "$WORK/$system-$w.time" "${GENERATOR_PIN[@]}" "$CHORUS" bench $args --endpoints "$eps" --duration "$DURATION" \
      --json --no-progress >"$WORK/$system-$w.json" 2>"$WORK/$system-$w.err"; then
      echo "{\"failed\": $(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip().splitlines()[0][:300]))' <"$WORK/$system-$w.err")}" >"$WORK/$system-$w.json"
    fi
    echo "$(($(cpu_ticks "${members[@]}") - ticks)) $(getconf CLK_TCK) $(tail -1 "$WORK/$system-$w.time")" \
      >"$WORK/$system-$w.cpu"
    scrape_wal_fsync "$base" >"$WORK/$system-$w.fsync-after"
    echo "ran $w against $system ($started to $(date -u +%T.%3N) UTC)" >&2
  done
done

rss_kib() { # the summed resident memory of a system's three processes
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
if [[ $MEMORY_KEYS -gt 0 ]]; then
  for system in etcd chorus; do
    eps=$ETCD_EPS
    [[ $system == chorus ]] && eps=$CHORUS_EPS
    "${GENERATOR_PIN[@]}" "$CHORUS" bench put --endpoints "$eps" --conns 30 --clients 300 --total "$MEMORY_KEYS" \
      --sequential-keys --key-space "$MEMORY_KEYS" --key-size 16 --val-size 256 --no-progress \
      --json >"$WORK/$system-memory.json"
  done
fi
ETCD_RSS=$(rss_kib "${ETCD_PIDS[@]}")
CHORUS_RSS=$(rss_kib "${CHORUS_PIDS[@]}")

mkdir -p "$(dirname "$OUT")"
python3 - "$WORK" "$WORKLOADS" "$DURATION" "$ETCD_RSS" "$CHORUS_RSS" "$MEMORY_KEYS" \
  "$(etcd --version | head -1)" "$(git rev-parse --short HEAD)" "${SERVER_CPUS:-}" \
  "${GENERATOR_CPUS:-}" <<'PY' | tee "$OUT"
import json, os, platform, sys
(work, workloads, duration, etcd_rss, chorus_rss, memory_keys, etcd_version, commit, server_cpus,
 generator_cpus) = sys.argv[1:]

def load(system, w):
    with open(os.path.join(work, f"{system}-{w}.json")) as f:
        return json.load(f)

def cpu(system, w, r):
    """The members' and the load generator's CPU milliseconds per 1,000 requests."""
    ticks, hz, user, sys_ = open(os.path.join(work, f"{system}-{w}.cpu")).read().split()
    ok = r.get("requests_ok", 0)
    if "failed" in r or ok == 0:
        return None
    per_k = 1e6 / ok
    return int(ticks) / int(hz) * per_k, (float(user) + float(sys_)) * per_k

def cell(r, key):
    if "failed" in r:
        return "failed"
    if key == "throughput":
        return f"{r['throughput']:,.0f}"
    return f"{r['latency'][key]:.2f}"

def ratio(a, b, key, higher_better):
    if "failed" in a or "failed" in b:
        return "-"
    x = a["throughput"] if key == "throughput" else a["latency"][key]
    y = b["throughput"] if key == "throughput" else b["latency"][key]
    if x == 0 or y == 0:
        return "-"
    return f"{y / x:.2f}x"

cores = os.cpu_count()
mem_kib = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
print(f"Chorus {commit} vs {etcd_version}; 3 members each on loopback, fsync on; "
      f"`chorus bench` for both, {duration} per workload.")
print(f"Machine: {cores} cores, {mem_kib / 1048576:.1f} GiB memory, {platform.platform()}, "
      f"CPU {next((l.split(':')[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '?')}.")
if server_cpus:
    print(f"Pinned with taskset: the six members to CPUs {server_cpus}, the load generator to "
          f"CPUs {generator_cpus}.")
else:
    print("Not pinned: the load generator shares the cores with the six members.")
print()
print("| workload | etcd req/s | chorus req/s | throughput ratio | etcd p50 ms | chorus p50 ms "
      "| etcd p99 ms | chorus p99 ms | p99 ratio (chorus/etcd) | errors etcd / chorus |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for w in workloads.split():
    e, c = load("etcd", w), load("chorus", w)
    errors = " / ".join(str(r.get("requests_failed", "-")) for r in (e, c))
    print(f"| {w} | {cell(e, 'throughput')} | {cell(c, 'throughput')} | "
          f"{ratio(e, c, 'throughput', True)} | {cell(e, 'p50_ms')} | {cell(c, 'p50_ms')} | "
          f"{cell(e, 'p99_ms')} | {cell(c, 'p99_ms')} | {ratio(e, c, 'p99_ms', False)} | {errors} |")
print()
print("CPU time per 1,000 requests (user + system): the three members', and the load generator's.")
print()
print("| workload | etcd members ms | chorus members ms | members' CPU ratio (etcd/chorus) "
      "| load generator ms, etcd run | load generator ms, chorus run |")
print("|---|---:|---:|---:|---:|---:|")
for w in workloads.split():
    e, c = cpu("etcd", w, load("etcd", w)), cpu("chorus", w, load("chorus", w))
    show = lambda x, i: "-" if x is None else f"{x[i]:.1f}"
    ratio_cpu = "-" if e is None or c is None or c[0] == 0 else f"{e[0] / c[0]:.2f}x"
    print(f"| {w} | {show(e, 0)} | {show(c, 0)} | {ratio_cpu} | {show(e, 1)} | {show(c, 1)} |")

def fsyncs(system, w):
    """The members' WAL fsyncs during w, from their histograms: (count, over 128 ms, over
    512 ms, the bucket bound under which 99% fell)."""
    def read(suffix):
        try:
            with open(f"{work}/{system}-{w}.fsync-{suffix}") as f:
                return {float(le): int(n) for le, n in (line.split() for line in f)}
        except (OSError, ValueError):
            return {}
    before, after = read("before"), read("after")
    if not after:
        return None
    cumulative = {le: after[le] - before.get(le, 0) for le in sorted(after)}
    total = cumulative[float("inf")]
    if total == 0:
        return None
    p99 = next(le for le, n in cumulative.items() if n >= 0.99 * total)
    return total, total - cumulative.get(0.128, 0), total - cumulative.get(0.512, 0), p99

print()
print("WAL fsyncs of the three members during each workload, from their own "
      "`etcd_disk_wal_fsync_duration_seconds` histograms: a disk stall shows in both systems.")
print()
print("| workload | etcd fsyncs | chorus fsyncs | etcd over 128 ms | chorus over 128 ms "
      "| etcd over 512 ms | chorus over 512 ms | etcd p99 bucket | chorus p99 bucket |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for w in workloads.split():
    e, c = fsyncs("etcd", w), fsyncs("chorus", w)
    show = lambda x, i: "-" if x is None else f"{x[i]:,}"
    bound = lambda x: "-" if x is None else f"≤ {x[3] * 1000:g} ms"
    print(f"| {w} | {show(e, 0)} | {show(c, 0)} | {show(e, 1)} | {show(c, 1)} | {show(e, 2)} "
          f"| {show(c, 2)} | {bound(e)} | {bound(c)} |")
for w in workloads.split():
    r = load("etcd", w)
    if w.endswith("-paced") and r.get("rate_limit"):
        print(f"\n{w}: both offered {r['rate_limit']:,.0f} req/s, {float(os.environ.get('PACED_FRACTION', 0.8)):.0%} "
              f"of etcd's unpaced {w.removesuffix('-paced')} throughput; latency from each request's "
              f"scheduled start")
for w in workloads.split():
    for system in ("etcd", "chorus"):
        r = load(system, w)
        if "failed" in r:
            print(f"\n{system} {w} failed: {r['failed']}")
        elif r.get("delivery"):
            d = r["delivery"]
            print(f"\n{system} {w}: {d['count']} of {r['deliveries_expected']} events delivered, "
                  f"delivery p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms")
print()
print(f"Resident memory of the 3 members after the runs"
      f"{f' (including {memory_keys} 256-byte values)' if memory_keys != '0' else ''}: "
      f"etcd {int(etcd_rss) / 1024:.0f} MiB, chorus {int(chorus_rss) / 1024:.0f} MiB.")
PY
