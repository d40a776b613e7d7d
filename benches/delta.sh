#!/usr/bin/env bash
# Delta: what a second version moves over a link when 5% of a file's bytes change,
# spread over the file in N evenly spaced runs. For each N, a root and a child on
# loopback: the child takes version 1, then version 2, and the script prints
#   - new chunks: the bytes of chunks version 2 adds (what would cross without deltas);
#   - moved: the bytes the child received for version 2 (chunk deltas, PROTOCOL.md
#     §13.2), and the seconds from its approval until the child held it.
# Asserts nothing. Every wait is bounded (arbor wait --timeout).
#   ARBOR_BENCH_MIB=64 ARBOR_BENCH_SPREADS="16 64 256 1024 4096" benches/delta.sh
set -euo pipefail

MIB=${ARBOR_BENCH_MIB:-64}
SPREADS=${ARBOR_BENCH_SPREADS:-16 64 256 1024 4096}
cd "$(dirname "$0")/.."
cargo build --release --quiet
ARBOR=$PWD/target/release/arbor
source benches/common.sh
work_dir arbor-delta

BYTES=$((MIB << 20))
head -c "$BYTES" /dev/urandom >"$WORK/v1.bin"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# Publishes and approves $2 as version $3 on root $1; prints the publish JSON.
publish() {
    local out
    out=$("$ARBOR" publish --data "$1" --tenant t --category c --id p --version "$3" "$2" --json 2>/dev/null)
    "$ARBOR" approve --data "$1" "$(echo "$out" | json "d['update_id']")" --group all --subtree >/dev/null
    echo "$out"
}

echo "delta: ${MIB} MiB file, 5% of its bytes changed in N runs; a root and a child on loopback"
printf '%8s %10s %12s %8s %8s\n' "runs" "run bytes" "new chunks" "moved" "seconds"
for runs in $SPREADS; do
    R=$WORK/n$runs
    mkdir -p "$R/in1" "$R/in2"
    cp "$WORK/v1.bin" "$R/in1/payload"
    cp "$WORK/v1.bin" "$R/in2/payload"
    run_bytes=$((BYTES / 20 / runs))
    for i in $(seq 0 $((runs - 1))); do
        head -c "$run_bytes" /dev/urandom |
            dd of="$R/in2/payload" bs=64K iflag=fullblock seek=$((i * BYTES / runs + BYTES / (2 * runs))) \
                oflag=seek_bytes conv=notrunc status=none
    done
    "$ARBOR" init --root --data "$R/root" >/dev/null 2>&1
    start_arbor "$R/root" /ip4/127.0.0.1/tcp/0
    "$ARBOR" init --data "$R/child" --join "$("$ARBOR" token --data "$R/root" 2>/dev/null)" >/dev/null 2>&1
    start_arbor "$R/child" /ip4/127.0.0.1/tcp/0
    first=$(publish "$R/root" "$R/in1" 1 | json "d['update_id']")
    "$ARBOR" wait --data "$R/child" --timeout 10m "$first" >/dev/null
    second=$(publish "$R/root" "$R/in2" 2)
    t0=$(now)
    id=$(echo "$second" | json "d['update_id']")
    "$ARBOR" wait --data "$R/child" --timeout 10m "$id" >/dev/null
    secs=$(calc "$(now) - $t0")
    new=$(echo "$second" | json "d['new_bytes'] * 100 / d['bytes']")
    moved=$("$ARBOR" status --data "$R/child" --json |
        json "[u['bytes_in'] for u in d['updates'] if u['update_id'] == '$id'][0] * 100 / $BYTES")
    printf '%8d %10d %11.1f%% %7.1f%% %8.2f\n' "$runs" "$run_bytes" "$new" "$moved" "$secs"
    stop_all
    rm -rf "$R"
done
