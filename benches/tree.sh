#!/usr/bin/env bash
# Tree benchmarks on loopback; prints figures, asserts nothing.
#
#   (a) one hop: parent -> child, a 1 GiB update, against nginx -> curl over plain HTTP
#       on the same bytes in the same run (nginx is installed from Debian if missing);
#   (b) depth: a chain root -> n1 -> n2 -> n3, time to the last node against one hop;
#   (c) memory: peak RSS of a node serving the 1 GiB update to 4 children.
#
# Every run starts from empty node directories, with the nodes connected; the clock
# starts when the root has published. The receiving side writes to the same disk as
# curl does. Each figure is the median of ARBOR_BENCH_RUNS runs (default 3).
#   ARBOR_BENCH_MIB=1024 ARBOR_BENCH_RUNS=3 benches/tree.sh
set -euo pipefail

MIB=${ARBOR_BENCH_MIB:-1024}
RUNS=${ARBOR_BENCH_RUNS:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet
ARBOR=$PWD/target/release/arbor
source benches/common.sh
work_dir arbor-bench
chmod 755 "$WORK" # nginx's workers run as an unprivileged user

if ! command -v nginx >/dev/null; then
    echo "installing nginx from Debian's packages..." >&2
    apt-get install -y -qq nginx-light >/dev/null 2>&1 || apt-get install -y -qq nginx >/dev/null
fi

mkdir -p "$WORK/input"
head -c $((MIB << 20)) /dev/urandom >"$WORK/input/payload.bin"
BYTES=$((MIB << 20))


# Starts `arbor run` for node dir $1 on loopback in the background.
start_node() { start_arbor "$1" /ip4/127.0.0.1/tcp/0; }


# A fresh, running root with no updates. Sets ROOT.
fresh_root() {
    ROOT=$WORK/$1/root
    mkdir -p "$WORK/$1"
    "$ARBOR" init --root --data "$ROOT" >/dev/null 2>&1
    start_node "$ROOT"
}

# Creates and starts node $2 under running node $1.
add_child() {
    local token
    token=$("$ARBOR" token --data "$1" 2>/dev/null)
    "$ARBOR" init --data "$2" --join "$token" >/dev/null 2>&1
    start_node "$2"
}

# Publishes the input on the running root and approves it for the whole tree; sets
# UPDATE and T0 (when the root has it and offers it to its children).
publish() {
    UPDATE=$("$ARBOR" publish --data "$ROOT" --tenant bench --category data --id payload \
        --version 1 "$WORK/input" 2>/dev/null)
    "$ARBOR" approve --data "$ROOT" "$UPDATE" --group all --subtree >/dev/null
    T0=$(now)
}

# Sets SECS to the seconds from publish to the last of a chain of $2 nodes below the
# root holding it. (Not run in a $(...) subshell: cleanup must see the daemons' pids.)
chain_time() {
    local dir=r$1-$2 parent last t1
    fresh_root "$dir"
    parent=$ROOT
    for i in $(seq "$2"); do
        add_child "$parent" "$WORK/$dir/n$i"
        parent=$WORK/$dir/n$i
    done
    publish
    "$ARBOR" wait --data "$parent" --timeout 30m "$UPDATE" >/dev/null
    t1=$(now)
    stop_all
    rm -rf "${WORK:?}/$dir"
    SECS=$(calc "$t1 - $T0")
}

# Sets SECS to the seconds curl takes to fetch the input from nginx and sync it to disk,
# and CACHED to the seconds until curl has it in the page cache.
nginx_time() {
    local conf=$WORK/nginx.conf port t0 t1
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events {}
http {
    access_log off;
    sendfile on;
    server { listen 127.0.0.1:$port; root $WORK/input; }
}
EOF
    nginx -c "$conf" -p "$WORK" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 200); do curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$port/payload.bin" && break; sleep 0.05; done
    t0=$(now)
    curl -sf -o "$WORK/curl.out" "http://127.0.0.1:$port/payload.bin"
    CACHED=$(calc "$(now) - $t0")
    # An update is complete on an arbor node once it is on disk; the same for curl.
    sync -f "$WORK/curl.out"
    t1=$(now)
    [ "$(stat -c %s "$WORK/curl.out")" = "$BYTES" ] || { echo "curl fetched a short file" >&2; exit 1; }
    stop_all
    rm -f "$WORK/curl.out"
    SECS=$(calc "$t1 - $t0")
}

echo "arbor tree benchmarks: ${MIB} MiB update, median of $RUNS runs, $(nproc) cores"

hop=(); curl=(); cached=(); deep=()
for run in $(seq "$RUNS"); do
    sync # nothing of the previous run is left for the disk to write
    nginx_time
    curl+=("$SECS")
    cached+=("$CACHED")
    chain_time "$run" 1
    hop+=("$SECS")
    chain_time "$run" 3
    deep+=("$SECS")
done
HOP=$(printf '%s\n' "${hop[@]}" | median)
CURL=$(printf '%s\n' "${curl[@]}" | median)
CACHED=$(printf '%s\n' "${cached[@]}" | median)
DEEP=$(printf '%s\n' "${deep[@]}" | median)
mbs() { calc "$BYTES / $1 / 1000000" | xargs printf '%.0f'; }
printf '(a) one hop      arbor %6.2f s  %5s MB/s   nginx+curl+sync %6.2f s  %5s MB/s   ratio %.2f\n' \
    "$HOP" "$(mbs "$HOP")" "$CURL" "$(mbs "$CURL")" "$(calc "$CURL / $HOP")"
printf '                 (curl into the page cache, not yet on disk: %.2f s  %s MB/s   ratio %.2f)\n' \
    "$CACHED" "$(mbs "$CACHED")" "$(calc "$CACHED / $HOP")"
printf '(b) depth        3 hops %6.2f s vs 1 hop %6.2f s: depth adds %.1f%%\n' \
    "$DEEP" "$HOP" "$(calc "($DEEP - $HOP) * 100 / $HOP")"

# (c) one root serving 4 children at once.
fresh_root mem
ROOT_PID=$LAST_PID
for i in 1 2 3 4; do add_child "$ROOT" "$WORK/mem/c$i"; done
publish
for i in 1 2 3 4; do "$ARBOR" wait --data "$WORK/mem/c$i" --timeout 30m "$UPDATE" >/dev/null; done
HWM=$(awk '/VmHWM/ {print $2}' "/proc/$ROOT_PID/status")
stop_all
printf '(c) memory       peak RSS of the node serving 4 children: %d MiB\n' $((HWM / 1024))
