#!/usr/bin/env bash
# Tree benchmark (b), depth, over rate-limited links instead of loopback; prints
# figures, asserts nothing. Needs root (network namespaces, veth, tc).
#
# On loopback every hop costs the same CPU (noise encryption, hashing, storing), so
# on a small machine a chain measures CPU sharing. Here every node runs in its own
# network namespace and each parent/child link is a veth pair shaped by a tbf qdisc on
# both ends, so the link, not the CPU, is the limit:
#
#   ns0 (root) --p1/c1-- ns1 (n1) --p2/c2-- ns2 (n2) --p3/c3-- ns3 (n3)
#   link i: 10.77.i.1 (parent side) / 10.77.i.2 (child side), /30
#
# Compares the time from publish until the last node of a chain root -> n1 -> n2 -> n3
# holds the update against one hop root -> n1. With cut-through forwarding (a node
# serves each chunk to its children as soon as it has verified it) depth should add
# little. Every run starts from empty node directories, with the nodes connected; the
# clock starts when the root has published the update and approved it for the tree.
# Each figure is the median of the runs.
# The namespaces, links and daemons are torn down on exit, Ctrl-C or kill.
#
#   ARBOR_LINK_RATE=200mbit  rate of every link, each way (tc units: kbit, mbit, gbit)
#   ARBOR_LINK_MIB=256       update size
#   ARBOR_BENCH_RUNS=3       runs
#   ARBOR_LINK_KEEP=1        keep the work directory (node dirs and logs) for a look
#   sudo benches/tree-links.sh
set -euo pipefail

RATE=${ARBOR_LINK_RATE:-200mbit}
MIB=${ARBOR_LINK_MIB:-256}
RUNS=${ARBOR_BENCH_RUNS:-3}
KEEP=${ARBOR_LINK_KEEP:-}
DEPTH=3

[ "$(id -u)" = 0 ] || { echo "needs root: network namespaces, veth pairs and tc" >&2; exit 1; }
for tool in ip tc; do
    command -v "$tool" >/dev/null || { echo "needs $tool (Debian: iproute2)" >&2; exit 1; }
done
if ! command -v jq >/dev/null; then
    echo "installing jq from Debian's packages..." >&2
    apt-get install -y -qq jq >/dev/null
fi

cd "$(dirname "$0")/.."
cargo build --release --quiet
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
ARBOR=$TARGET/release/arbor

source benches/common.sh

# "200mbit" -> 200000000 (bits per second), as tc reads it.
rate_bits() {
    local n u
    n=$(sed -E 's/^([0-9.]+).*/\1/' <<<"$1")
    u=$(sed -E 's/^[0-9.]+//' <<<"$1" | tr 'A-Z' 'a-z')
    case $u in
        bit | "") calc "$n" ;;
        kbit) calc "$n * 1000" ;;
        mbit) calc "$n * 1000000" ;;
        gbit) calc "$n * 1000000000" ;;
        *) echo "ARBOR_LINK_RATE: use bit, kbit, mbit or gbit, not $1" >&2; exit 1 ;;
    esac
}
RATE_BITS=$(rate_bits "$RATE")
BYTES=$((MIB << 20))
IDEAL=$(calc "$BYTES * 8 / $RATE_BITS")
# Give up on a transfer after ten times the ideal, plus five minutes.
WAIT_LIMIT=$(awk "BEGIN { printf \"%d\", $IDEAL * 10 + 300 }")s
# tbf: a bucket of 4 ms at the rate (at least 64 KiB: one GSO packet), queueing 50 ms.
BURST=$(awk "BEGIN { b = $RATE_BITS / 8 * 0.004; if (b < 65536) b = 65536; printf \"%d\", b }")

NS=()
for i in $(seq 0 "$DEPTH"); do NS+=("arbor-b$$-$i"); done
WORK=$(mktemp -d /var/tmp/arbor-links.XXXXXX)
PIDS=()
WAITERS=()

cleanup() {
    trap - EXIT INT TERM
    for p in "${WAITERS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # Anything still inside our namespaces was started by this script.
    for ns in "${NS[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    wait 2>/dev/null || true
    for ns in "${NS[@]}"; do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "$KEEP" ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

# Node i of the chain runs in ${NS[i]} and reaches its parent (node i-1) at 10.77.i.1.
parent_ip() { echo "10.77.$1.1"; }

setup_links() {
    for i in $(seq 0 "$DEPTH"); do
        ip netns add "${NS[i]}"
        ip -n "${NS[i]}" link set lo up # the admin API listens on loopback
    done
    for i in $(seq "$DEPTH"); do
        local up=${NS[i - 1]} down=${NS[i]}
        ip link add "p$i" netns "$up" type veth peer name "c$i" netns "$down"
        ip -n "$up" addr add "$(parent_ip "$i")/30" dev "p$i"
        ip -n "$down" addr add "10.77.$i.2/30" dev "c$i"
        ip -n "$up" link set "p$i" up
        ip -n "$down" link set "c$i" up
        tc -n "$up" qdisc add dev "p$i" root tbf rate "$RATE" burst "$BURST" latency 50ms
        tc -n "$down" qdisc add dev "c$i" root tbf rate "$RATE" burst "$BURST" latency 50ms
    done
}

# Runs arbor in namespace $1 (management commands reach the daemon's admin API on the
# namespace's loopback).
arbor_in() {
    local ns=$1
    shift
    ip netns exec "$ns" "$ARBOR" "$@"
}

# Starts `arbor run` for node dir $2 in namespace $1 in the background.
start_node() { start_arbor "$2" /ip4/0.0.0.0/tcp/0 ip netns exec "$1"; }

stop_all() {
    for p in "${WAITERS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    WAITERS=()
}

# The TCP port node dir $2 (in namespace $1) listens on for peers.
listen_port() {
    arbor_in "$1" status --data "$2" --json |
        jq -r '.listen[]' | sed -nE 's#^/ip4/[^/]+/tcp/([0-9]+).*#\1#p' | head -n 1
}

# Creates node $1 of the chain (dir $2) under running node $1-1 (dir $3), starts it
# and waits until it is connected to its parent.
add_child() {
    local i=$1 dir=$2 parent=$3 port token
    port=$(listen_port "${NS[i - 1]}" "$parent")
    [ -n "$port" ] || { echo "cannot tell where $parent listens" >&2; return 1; }
    token=$(arbor_in "${NS[i - 1]}" token --data "$parent" --addr "/ip4/$(parent_ip "$i")/tcp/$port" 2>/dev/null)
    "$ARBOR" init --data "$dir" --join "$token" >/dev/null 2>&1
    start_node "${NS[i]}" "$dir"
    for _ in $(seq 600); do
        [ "$(arbor_in "${NS[i]}" status --data "$dir" --json | jq -r '.parent.connected')" = true ] && return 0
        sleep 0.05
    done
    echo "node $dir did not connect to its parent" >&2
    cat "$dir.log" >&2
    return 1
}

mkdir -p "$WORK/input"
head -c "$BYTES" /dev/urandom >"$WORK/input/payload.bin"

# Sets TIMES to the seconds from publish until each of a chain of $2 nodes below the
# root holds the update (space-separated, nearest first); run $1.
chain_time() {
    local dir=$WORK/r$1-$2 root parent update t0 i
    mkdir -p "$dir"
    root=$dir/root
    "$ARBOR" init --root --data "$root" >/dev/null 2>&1
    start_node "${NS[0]}" "$root"
    parent=$root
    for i in $(seq "$2"); do
        add_child "$i" "$dir/n$i" "$parent"
        parent=$dir/n$i
    done
    update=$(arbor_in "${NS[0]}" publish --data "$root" --tenant bench --category data \
        --id payload --version 1 "$WORK/input" 2>/dev/null)
    arbor_in "${NS[0]}" approve --data "$root" "$update" --group all --subtree >/dev/null
    t0=$(now)
    for i in $(seq "$2"); do
        (
            arbor_in "${NS[i]}" wait --data "$dir/n$i" --timeout "$WAIT_LIMIT" "$update" \
                >/dev/null 2>"$dir/wait$i.err"
            now >"$dir/done$i"
        ) &
        WAITERS+=("$!")
    done
    for i in $(seq "$2"); do
        wait "${WAITERS[i - 1]}" || {
            echo "$dir/n$i did not get the update within $WAIT_LIMIT:" >&2
            cat "$dir/wait$i.err" >&2
            tail -n 20 "$dir/n$i.log" >&2
            exit 1
        }
    done
    WAITERS=()
    TIMES=""
    for i in $(seq "$2"); do TIMES+="$(calc "$(cat "$dir/done$i") - $t0") "; done
    TIMES=${TIMES% }
    stop_all
    if [ -z "$KEEP" ]; then rm -rf "$dir"; fi
}

setup_links
mbit() { calc "$BYTES * 8 / $1 / 1000000" | xargs printf '%.0f'; }
echo "arbor depth over links: ${MIB} MiB update, $RATE tbf links (each way), $DEPTH hops vs 1," \
    "median of $RUNS runs, $(nproc) cores"
printf 'ideal (bytes*8/rate, ignoring headers): %.2f s\n' "$IDEAL"

hop=()
deep=()
for run in $(seq "$RUNS"); do
    chain_time "$run" 1
    hop+=("$TIMES")
    chain_time "$run" "$DEPTH"
    read -r -a t <<<"$TIMES"
    deep+=("${t[-1]}")
    printf 'run %d: 1 hop %6.2f s (%s Mbit/s)   %d hops: n1..n%d at' \
        "$run" "${hop[-1]}" "$(mbit "${hop[-1]}")" "$DEPTH" "$DEPTH"
    printf ' %.2f' "${t[@]}"
    printf ' s   depth adds %.1f%%\n' "$(calc "(${t[-1]} - ${hop[-1]}) * 100 / ${hop[-1]}")"
done
HOP=$(printf '%s\n' "${hop[@]}" | median)
DEEP=$(printf '%s\n' "${deep[@]}" | median)

ACHIEVED=$(mbit "$HOP")
printf 'one hop achieved %s Mbit/s of payload on a %s link (%.0f%% of the ideal)\n' \
    "$ACHIEVED" "$RATE" "$(calc "$IDEAL * 100 / $HOP")"
if awk "BEGIN { exit !($ACHIEVED * 1000000 > $RATE_BITS * 1.05) }"; then
    echo "WARNING: faster than the link rate: tbf is not limiting; the figures are not link-bound" >&2
fi
printf '(b) depth over %s links: %d hops %.2f s vs 1 hop %.2f s: depth adds %.1f%% (ideal %.2f s)\n' \
    "$RATE" "$DEPTH" "$DEEP" "$HOP" "$(calc "($DEEP - $HOP) * 100 / $HOP")" "$IDEAL"
