# Shared by the scripts in bench/: source it, do not run it.

# start_cluster PREFIX WORKDIR BASE_PORT SERVER...: starts a 3-member cluster of SERVER (etcd, or
# `chorus serve`, which takes etcd's flags) named PREFIX1..3, with data under WORKDIR, clients on
# BASE+1..3, peers on BASE+11..13 and metrics (/metrics, etcd's names for both) on BASE+21..23.
# Appends the members' pids to the array PIDS.
start_cluster() {
  local prefix=$1 work=$2 base=$3 cluster="" i
  shift 3
  for i in 1 2 3; do
    cluster+="${prefix}${i}=http://127.0.0.1:$((base + 10 + i)),"
  done
  for i in 1 2 3; do
    "$@" --name "${prefix}${i}" --data-dir "$work/${prefix}${i}" \
      --listen-client-urls "http://127.0.0.1:$((base + i))" \
      --advertise-client-urls "http://127.0.0.1:$((base + i))" \
      --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
      --listen-metrics-urls "http://127.0.0.1:$((base + 20 + i))" \
      --initial-cluster "${cluster%,}" --initial-cluster-token "bench-$prefix" \
      --initial-cluster-state new >"$work/${prefix}${i}.log" 2>&1 &
    PIDS+=($!)
  done
}

# stop_clusters WORKDIR: stops every member in PIDS and removes WORKDIR (for an EXIT trap).
# With KEEP_LOGS=DIR, the members' logs and the load generator's JSON results in WORKDIR are
# copied to DIR first.
stop_clusters() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "${KEEP_LOGS:-}" ]]; then
    mkdir -p "$KEEP_LOGS"
    cp "$1"/*.log "$1"/*.json "$KEEP_LOGS"/ 2>/dev/null || true
  fi
  rm -rf "$1"
}

# scrape_wal_fsync BASE_PORT: the WAL fsync histogram of the three members of the cluster
# start_cluster started on BASE_PORT, summed, as "upper_bound count" lines (cumulative).
scrape_wal_fsync() {
  python3 - "$1" <<'PY'
import sys, urllib.request
base = int(sys.argv[1])
buckets = {}
for i in (1, 2, 3):
    url = f"http://127.0.0.1:{base + 20 + i}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        continue
    for line in text.splitlines():
        if line.startswith('etcd_disk_wal_fsync_duration_seconds_bucket{le="'):
            le, count = line.split('le="')[1].split('"}')
            buckets[le] = buckets.get(le, 0) + float(count)
for le, count in buckets.items():
    print(le, int(count))
PY
}

# endpoints BASE_PORT: the client URLs of the cluster start_cluster started on BASE_PORT.
endpoints() {
  echo "http://127.0.0.1:$(($1 + 1)),http://127.0.0.1:$(($1 + 2)),http://127.0.0.1:$(($1 + 3))"
}

# wait_ready CHORUS ENDPOINTS: waits until the cluster takes a put.
wait_ready() {
  local chorus=$1 eps=$2 tries=0
  until "$chorus" bench put --endpoints "$eps" --total 1 --no-progress >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [[ $tries -gt 100 ]]; then echo "the cluster at $eps did not become ready" >&2; exit 1; fi
    sleep 0.2
  done
}

# cpu_ticks PIDS...: the user+system CPU time the processes have used, in clock ticks
# (getconf CLK_TCK per second).
cpu_ticks() {
  local total=0 pid stat
  for pid in "$@"; do
    read -ra stat <"/proc/$pid/stat"
    total=$((total + stat[13] + stat[14]))
  done
  echo "$total"
}

# need_etcd PACKAGES...: installs the Debian packages named (etcd-server for etcd, etcd-client
# for etcdctl) when a command they provide is missing and this runs as root; fails otherwise.
need_etcd() {
  local package missing=()
  for package in "$@"; do
    case $package in
      etcd-server) command -v etcd >/dev/null 2>&1 || missing+=("$package") ;;
      etcd-client) command -v etcdctl >/dev/null 2>&1 || missing+=("$package") ;;
    esac
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "etcd is not installed: apt-get install ${missing[*]}" >&2
    exit 1
  fi
}

# need_chorus: leaves in CHORUS the chorus binary to run: the one CHORUS already names, else
# this tree's release build, built now.
need_chorus() {
  if [[ -z "${CHORUS:-}" ]]; then
    cargo build --release --quiet
    CHORUS="$PWD/target/release/chorus"
  fi
}
