#!/usr/bin/env bash
# Client benchmark on loopback; prints figures, asserts nothing.
#
#   (a) install: a root and a client (`--install-dir`); from the approval until the
#       client's module is installed (fetched, verified, staged, fsynced, switched in),
#       against the same transfer to a node that only stores it (`arbor wait`);
#   (b) upgrade: a second version with 5% of its bytes changed in 16 runs spread over
#       the file; bytes the client fetched for it, and the time to installed;
#   (c) a new client over the same install directory (a machine reinstalled, its
#       modules kept): bytes fetched (nothing should move: the installed version is
#       recognised by its update id).
#
# Each figure is the median of ARBOR_BENCH_RUNS runs (default 3).
#   ARBOR_BENCH_MIB=256 ARBOR_BENCH_RUNS=3 benches/client.sh
set -euo pipefail

MIB=${ARBOR_BENCH_MIB:-256}
RUNS=${ARBOR_BENCH_RUNS:-3}
cd "$(dirname "$0")/.."
cargo build --release --quiet
ARBOR=$PWD/target/release/arbor
source benches/common.sh
work_dir arbor-bench-client

BYTES=$((MIB << 20))

mkdir -p "$WORK/v1/bin" "$WORK/v2/bin"
head -c "$BYTES" /dev/urandom >"$WORK/v1/bin/payload"
echo "version 1" >"$WORK/v1/README"
cp "$WORK/v1/bin/payload" "$WORK/v2/bin/payload"
echo "version 2" >"$WORK/v2/README"
# 5% of the bytes, in 16 runs spread evenly over the file.
RUN_BYTES=$((BYTES / 20 / 16))
for i in $(seq 0 15); do
    head -c "$RUN_BYTES" /dev/urandom |
        dd of="$WORK/v2/bin/payload" bs=1 seek=$((i * BYTES / 16 + BYTES / 64)) conv=notrunc status=none
done

# Seconds until `arbor status` of client $1 shows version $2 of the module installed.
until_installed() {
    local t0=$1 dir=$2 version=$3
    for _ in $(seq 36000); do
        if "$ARBOR" status --data "$dir" --json 2>/dev/null |
            python3 -c "import json,sys; d=json.load(sys.stdin); m=(d.get('installed') or {}).get('modules') or []; sys.exit(0 if m and (m[0].get('current') or {}).get('version')=='$version' else 1)"; then
            calc "$(now) - $t0"
            return 0
        fi
        sleep 0.02
    done
    echo "the client never installed $version" >&2
    return 1
}

received() {
    "$ARBOR" status --data "$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['parent']['bytes_received'])"
}

publish() { # $1 root, $2 version dir, $3 version; sets UPDATE and T0
    UPDATE=$("$ARBOR" publish --data "$1" --tenant bench --category data --id payload \
        --version "$3" "$WORK/$2" 2>/dev/null)
    T0=$(now)
    "$ARBOR" approve --data "$1" "$UPDATE" --group all --subtree >/dev/null
}

# Starts a client for node dir $1 installing into $2; waits until its admin API is up.
start_client() {
    "$ARBOR" run --data "$1" --listen /ip4/127.0.0.1/tcp/0 --install-dir "$2" 2>"$1.log" &
    PIDS+=("$!")
    for _ in $(seq 600); do [ -s "$1/admin.addr" ] && return 0; sleep 0.05; done
    echo "client $1 did not start" >&2
    return 1
}


echo "arbor client benchmark: ${MIB} MiB module, median of $RUNS runs, $(nproc) cores"
store=(); install=(); upgrade=(); upbytes=(); restart=()
for run in $(seq "$RUNS"); do
    sync
    R=$WORK/r$run
    mkdir -p "$R"
    "$ARBOR" init --root --data "$R/root" >/dev/null 2>&1
    start_arbor "$R/root" /ip4/127.0.0.1/tcp/0
    token=$("$ARBOR" token --data "$R/root" 2>/dev/null)
    "$ARBOR" init --data "$R/store" --join "$token" >/dev/null 2>&1
    start_arbor "$R/store" /ip4/127.0.0.1/tcp/0
    token=$("$ARBOR" token --data "$R/root" --client 2>/dev/null)
    "$ARBOR" init --data "$R/client" --join "$token" >/dev/null 2>&1
    start_client "$R/client" "$R/modules"

    publish "$R/root" v1 1.0
    ("$ARBOR" wait --data "$R/store" --timeout 30m "$UPDATE" >/dev/null && now >"$R/stored-at") &
    waiter=$!
    install+=("$(until_installed "$T0" "$R/client" 1.0)")
    wait "$waiter"
    store+=("$(calc "$(cat "$R/stored-at") - $T0")")

    before=$(received "$R/client")
    publish "$R/root" v2 2.0
    upgrade+=("$(until_installed "$T0" "$R/client" 2.0)")
    upbytes+=("$(( $(received "$R/client") - before ))")

    # A new client over the same install directory: nothing moves.
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
    token=$("$ARBOR" token --data "$R/root" --client 2>/dev/null)
    "$ARBOR" init --data "$R/client2" --join "$token" >/dev/null 2>&1
    start_client "$R/client2" "$R/modules"
    t0=$(now)
    until_installed "$t0" "$R/client2" 2.0 >/dev/null
    sleep 2 # let any fetch that would wrongly start show in the counter
    restart+=("$(received "$R/client2")")
    stop_all
    rm -rf "$R"
done

m() { printf '%s\n' "$@" | median; }
echo "(a) install ${MIB} MiB: $(m "${install[@]}") s to installed on the client; $(m "${store[@]}") s to stored on a plain node (one hop, same run)"
echo "(b) upgrade, 5% changed: $(m "${upgrade[@]}") s to installed; fetched $(m "${upbytes[@]}") bytes = $(calc "$(m "${upbytes[@]}") / $BYTES * 100")% of the module"
echo "(c) new client over an installed module: fetched $(m "${restart[@]}") bytes"
