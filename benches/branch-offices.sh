#!/usr/bin/env bash
# Branch offices on network namespaces (run as root); prints figures, asserts nothing.
#
# Builds its own topology, and always removes it (on success, failure or interrupt):
#   a root host; SITES branch hosts, each linked to the root by a WAN link of WAN rate
#   in both directions (veth + tc tbf); behind each branch host a LAN (a bridge) of
#   LEAVES leaf hosts, each on a link of LAN rate. Branch hosts route between the WAN
#   and their LAN.
# Then, for an update of MIB MiB:
#   A   arbor with a branch node on every branch host, the leaves its clients;
#   B   arbor with no branch node: the leaves are clients of the root at their site
#       (arbor token --site), behind their site's one WAN link, and share what they
#       fetch as siblings;
#   nginx  what users run today: an nginx caching reverse proxy on every branch host
#       (proxy_cache_lock on) in front of an origin nginx on the root host, every leaf
#       downloading through its site's proxy with curl.
# For each: the seconds until every leaf has installed the update (curl: has the file
# on disk), and the bytes that crossed each site's WAN link towards the site, from the
# branch host's interface counters. The bound is MIB MiB over the WAN goodput. For
# arbor, also the median client's install time, from its log.
#
#   ARBOR_BENCH_SITES=4 ARBOR_BENCH_LEAVES=4 ARBOR_BENCH_MIB=64 ARBOR_BENCH_WAN=40mbit \
#   ARBOR_BENCH_LAN=400mbit ARBOR_BENCH_RUNS="A B nginx" benches/branch-offices.sh
#
# ARBOR_BENCH_TMP is where the hosts keep their files (default /var/tmp: one disk shared
# by every host; /dev/shm takes the shared disk out of the figures). ARBOR_BIN runs
# that binary instead of building a release one. ARBOR_BENCH_MAX_WAN makes the script
# fail if an arbor run moved more than that many update sizes across some site's WAN
# link (tests/branch_offices.rs uses it).
set -euo pipefail

SITES=${ARBOR_BENCH_SITES:-4}
LEAVES=${ARBOR_BENCH_LEAVES:-4}
MIB=${ARBOR_BENCH_MIB:-64}
WAN=${ARBOR_BENCH_WAN:-40mbit}
LAN=${ARBOR_BENCH_LAN:-400mbit}
RUNS=${ARBOR_BENCH_RUNS:-A B nginx}
LIMIT=${ARBOR_BENCH_LIMIT_SECS:-600}

[ "$(id -u)" = 0 ] || { echo "run as root: it creates network namespaces" >&2; exit 1; }
# What the script drives beyond arbor, installed once if missing (Debian packages).
need=()
command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
case " $RUNS " in *" nginx "*) command -v nginx >/dev/null || need+=(nginx-light curl) ;; esac
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} for the benchmark" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
MAX_WAN=${ARBOR_BENCH_MAX_WAN:-}
cd "$(dirname "$0")/.."
if [ -n "${ARBOR_BIN:-}" ]; then
    ARBOR=$ARBOR_BIN
else
    cargo build --release --quiet
    ARBOR=$PWD/target/release/arbor
fi
WORK=$(mktemp -d "${ARBOR_BENCH_TMP:-/var/tmp}/arbor-branch.XXXXXX")
chmod 755 "$WORK"
P=ab$$ # namespace prefix: this run's namespaces only
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

source benches/common.sh
in_ns() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }
# Starts a command in a namespace in the background; $! is then the command's own pid
# (ip netns exec execs it), so that stop_all stops the command itself and not a subshell
# that would leave it running.
spawn_in_ns() { local ns=$1; shift; ip netns exec "$P-$ns" "$@" & }
shape() { # ns dev rate: tbf on the device's egress
    tc -n "$P-$1" qdisc add dev "$2" root tbf rate "$3" burst 64kb latency 100ms
}

build() {
    ip netns add "$P-r"
    ip -n "$P-r" link set lo up
    for s in $(seq "$SITES"); do
        ip netns add "$P-b$s"
        ip -n "$P-b$s" link set lo up
        ip link add "w$s" netns "$P-r" type veth peer name wan netns "$P-b$s"
        ip -n "$P-r" addr add "10.0.$s.1/30" dev "w$s"
        ip -n "$P-b$s" addr add "10.0.$s.2/30" dev wan
        ip -n "$P-r" link set "w$s" up
        ip -n "$P-b$s" link set wan up
        shape r "w$s" "$WAN"
        shape "b$s" wan "$WAN"
        ip -n "$P-b$s" link add lan type bridge
        ip -n "$P-b$s" addr add "10.$((100 + s)).0.1/24" dev lan
        ip -n "$P-b$s" link set lan up
        in_ns "b$s" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
        ip -n "$P-r" route add "10.$((100 + s)).0.0/24" via "10.0.$s.2"
        for l in $(seq "$LEAVES"); do
            local leaf="s${s}l$l"
            ip netns add "$P-$leaf"
            ip -n "$P-$leaf" link set lo up
            ip link add eth0 netns "$P-$leaf" type veth peer name "l$l" netns "$P-b$s"
            ip -n "$P-b$s" link set "l$l" master lan up
            ip -n "$P-$leaf" addr add "10.$((100 + s)).0.$((10 + l))/24" dev eth0
            ip -n "$P-$leaf" link set eth0 up
            ip -n "$P-$leaf" route add default via "10.$((100 + s)).0.1"
            shape "$leaf" eth0 "$LAN"
            shape "b$s" "l$l" "$LAN"
        done
    done
}

# Bytes received so far on each site's WAN link, one line per site.
wan_rx() {
    for s in $(seq "$SITES"); do in_ns "b$s" cat /sys/class/net/wan/statistics/rx_bytes; done
}

# Starts arbor in namespace $1 for node dir $2 listening on address $3, extra flags
# after; waits for its admin API; sets PORT to the TCP port it listens on. (Not run in a
# $(...) subshell: stop_all and cleanup must see the daemons' pids.)
start_in_ns() {
    local ns=$1 dir=$2 ip=$3
    shift 3
    spawn_in_ns "$ns" "$ARBOR" run --data "$dir" --listen "/ip4/$ip/tcp/0" "$@" 2>"$dir.log"
    PIDS+=("$!")
    for _ in $(seq 600); do
        if [ -s "$dir/admin.addr" ]; then
            PORT=$(in_ns "$ns" "$ARBOR" status --data "$dir" --json |
                tr -d ' \n' | sed -E 's/.*"listen":\["[^"]*\/tcp\/([0-9]+)".*/\1/')
            return 0
        fi
        sleep 0.05
    done
    echo "arbor in $ns did not start; its log:" >&2
    cat "$dir.log" >&2
    return 1
}

# Joins node dir $4 in namespace $3 under the node in namespace $2 (dir $5) reached at
# /ip4/$6/tcp/$7 with the token flags in $1 (e.g. "--client --site s1", or ""); starts
# it listening on $8 with the extra flags after; sets PORT.
join() {
    local kind=$1 pns=$2 ns=$3 dir=$4 pdir=$5 ip=$6 port=$7 own_ip=$8
    shift 8
    local token
    token=$(in_ns "$pns" "$ARBOR" token --data "$pdir" $kind --addr "/ip4/$ip/tcp/$port" 2>/dev/null)
    "$ARBOR" init --data "$dir" --join "$token" >/dev/null 2>&1
    start_in_ns "$ns" "$dir" "$own_ip" "$@"
}



# Waits until every leaf has the module installed (its link switched in: the install
# is complete and fsynced by then); prints the seconds since $1.
until_all_installed() {
    local t0=$1 left deadline
    deadline=$(calc "$t0 + $LIMIT")
    while :; do
        left=0
        for s in $(seq "$SITES"); do
            for l in $(seq "$LEAVES"); do
                [ -L "$WORK/run/s${s}l$l.modules/bench/data/payload" ] || left=$((left + 1))
            done
        done
        [ "$left" = 0 ] && { calc "$(now) - $t0"; return 0; }
        if [ "$(calc "($(now) > $deadline)")" = 1 ]; then
            echo "$left leaves had not installed the update after $LIMIT s" >&2
            return 1
        fi
        sleep 0.05
    done
}

# Prints the median over the leaves of the seconds each took from holding every chunk
# ("update complete" in its log) to having the update installed ("installed"): what
# their installs cost here. Waits up to 5 s for the last log lines.
install_secs() {
    local logs=()
    for s in $(seq "$SITES"); do
        for l in $(seq "$LEAVES"); do logs+=("$WORK/run/s${s}l$l.log"); done
    done
    for _ in $(seq 100); do
        [ "$(grep -l ' installed' "${logs[@]}" | wc -l)" = "${#logs[@]}" ] && break
        sleep 0.05
    done
    for f in "${logs[@]}"; do
        awk 'function secs(ts, t) { split(substr(ts, 12, 15), t, ":"); return t[1] * 3600 + t[2] * 60 + t[3] }
            /update complete/ { c = secs($1) }
            / installed/ && c != "" { d = secs($1) - c; if (d < 0) d += 86400; print d; exit }' "$f"
    done | median
}

# Runs arbor on topology A (branch nodes) or B (leaves under the root).
run_arbor() {
    local topology=$1 root_port before t0 secs after
    rm -rf "$WORK/run"
    mkdir -p "$WORK/run"
    local R=$WORK/run/root
    "$ARBOR" init --root --data "$R" >/dev/null 2>&1
    start_in_ns r "$R" 0.0.0.0
    root_port=$PORT
    for s in $(seq "$SITES"); do
        local parent_ns=r parent_dir=$R parent_ip=10.0.$s.1 parent_port=$root_port
        if [ "$topology" = A ]; then
            join "" r "b$s" "$WORK/run/b$s" "$R" "10.0.$s.1" "$root_port" 0.0.0.0
            parent_ns=b$s parent_dir=$WORK/run/b$s parent_ip=10.$((100 + s)).0.1 parent_port=$PORT
        fi
        # Without a branch node, the leaves of a site are siblings.
        local kind="--client"
        [ "$topology" = B ] && kind="--client --site s$s"
        for l in $(seq "$LEAVES"); do
            join "$kind" "$parent_ns" "s${s}l$l" "$WORK/run/s${s}l$l" "$parent_dir" "$parent_ip" \
                "$parent_port" 0.0.0.0 --install-dir "$WORK/run/s${s}l$l.modules"
        done
    done
    local update
    update=$(in_ns r "$ARBOR" publish --data "$R" --tenant bench --category data --id payload \
        --version 1 "$WORK/input" 2>/dev/null)
    mapfile -t before < <(wan_rx)
    t0=$(now)
    in_ns r "$ARBOR" approve --data "$R" "$update" --group all --subtree >/dev/null
    secs=$(until_all_installed "$t0")
    mapfile -t after < <(wan_rx)
    report "arbor $topology" "$secs" before after
    printf 'installs %s %.2f s: median over the clients, from holding every chunk to installed (their logs)\n' \
        "$topology" "$(install_secs)"
    stop_all
}

# Prints one result line: label, seconds, and WAN bytes per site (arrays named $3, $4).
report() {
    local label=$1 secs=$2
    local -n b=$3 a=$4
    local per_site=() worst=0
    for i in "${!a[@]}"; do
        local d=$((a[i] - b[i]))
        per_site+=("$(calc "$d / $BYTES")")
        [ "$d" -gt "$worst" ] && worst=$d
    done
    printf '%-8s %7.2f s (%.2fx the bound)  WAN bytes per site / update size: %s (worst %.3f)\n' \
        "$label" "$secs" "$(calc "$secs / $BOUND")" "${per_site[*]}" "$(calc "$worst / $BYTES")"
    if [ -n "$MAX_WAN" ] && [ "$label" != nginx ] && [ "$(calc "($worst > $MAX_WAN * $BYTES)")" = 1 ]; then
        echo "$label moved more than $MAX_WAN update sizes across a site's WAN link" >&2
        exit 1
    fi
}

run_nginx() {
    local before after t0 secs
    # A fresh cache each run: a warm one would time nothing.
    rm -rf "$WORK/nginx"
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx/origin.conf" <<EOF
daemon off; user root; worker_processes 1; pid $WORK/nginx/origin.pid;
error_log $WORK/nginx/origin.err;
events {}
http { access_log off; sendfile on;
  server { listen 0.0.0.0:8080; root $WORK/input; } }
EOF
    spawn_in_ns r nginx -c "$WORK/nginx/origin.conf" -p "$WORK/nginx"
    PIDS+=("$!")
    for s in $(seq "$SITES"); do
        mkdir -p "$WORK/nginx/cache$s"
        cat >"$WORK/nginx/proxy$s.conf" <<EOF
daemon off; user root; worker_processes 1; pid $WORK/nginx/proxy$s.pid;
error_log $WORK/nginx/proxy$s.err;
events {}
http { access_log off; sendfile on;
  proxy_cache_path $WORK/nginx/cache$s keys_zone=c$s:10m max_size=4g inactive=1h use_temp_path=off;
  server { listen 10.$((100 + s)).0.1:8080;
    location / { proxy_pass http://10.0.$s.1:8080; proxy_cache c$s; proxy_cache_valid 200 1h;
      proxy_cache_lock on; proxy_cache_lock_timeout 1h; proxy_cache_lock_age 1h;
      proxy_read_timeout 1h; } } }
EOF
        spawn_in_ns "b$s" nginx -c "$WORK/nginx/proxy$s.conf" -p "$WORK/nginx"
        PIDS+=("$!")
    done
    for s in $(seq "$SITES"); do
        for _ in $(seq 200); do
            # Any HTTP answer (a 404 here, never cached) means the proxy is up.
            [ "$(in_ns "s${s}l1" curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://10.$((100 + s)).0.1:8080/ready" 2>/dev/null)" != 000 ] && break
            sleep 0.05
        done
    done
    for p in "${PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null || { echo "an nginx did not start (see $WORK/nginx/*.err)" >&2; return 1; }
    done
    mapfile -t before < <(wan_rx)
    t0=$(now)
    local curls=()
    for s in $(seq "$SITES"); do
        for l in $(seq "$LEAVES"); do
            spawn_in_ns "s${s}l$l" sh -c "curl -sf --max-time $LIMIT -o '$WORK/nginx/s${s}l$l.out' 'http://10.$((100 + s)).0.1:8080/payload.bin' && sync -f '$WORK/nginx/s${s}l$l.out'"
            curls+=("$!")
        done
    done
    for c in "${curls[@]}"; do wait "$c"; done
    secs=$(calc "$(now) - $t0")
    mapfile -t after < <(wan_rx)
    report nginx "$secs" before after
    stop_all
}

mkdir -p "$WORK/input"
head -c $((MIB << 20)) /dev/urandom >"$WORK/input/payload.bin"
BYTES=$((MIB << 20))
# The WAN goodput bound: tbf counts whole frames, so ~1448 payload bytes per 1514.
rate_bits=$(echo "$WAN" | awk '/mbit$/ { sub(/mbit/, ""); print $1 * 1e6; next } /gbit$/ { sub(/gbit/, ""); print $1 * 1e9 }')
BOUND=$(calc "$BYTES * 8 / ($rate_bits * 1448 / 1514)")
echo "branch offices: $SITES sites x $LEAVES leaves, ${MIB} MiB update, WAN $WAN, LAN $LAN, $(nproc) cores; bound $(printf '%.1f' "$BOUND") s"
build
for r in $RUNS; do
    case $r in
    A | B) run_arbor "$r" ;;
    nginx) run_nginx ;;
    *) echo "unknown run $r (A, B or nginx)" >&2; exit 1 ;;
    esac
done
