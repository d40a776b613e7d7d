#!/usr/bin/env bash
# Delta: how many bytes a second version moves over every link when 5% of a file's
# bytes change, spread over the file in N evenly spaced runs. Prints, for each N, the
# bytes of chunks the second version adds (what crosses each link) as a share of its
# size; asserts nothing.
#   ARBOR_BENCH_MIB=64 ARBOR_BENCH_SPREADS="16 64 256 1024 4096" benches/delta.sh
set -euo pipefail

MIB=${ARBOR_BENCH_MIB:-64}
SPREADS=${ARBOR_BENCH_SPREADS:-16 64 256 1024 4096}
cd "$(dirname "$0")/.."
cargo build --release --quiet
ARBOR=$PWD/target/release/arbor
WORK=$(mktemp -d /var/tmp/arbor-delta.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

BYTES=$((MIB << 20))
head -c "$BYTES" /dev/urandom >"$WORK/v1.bin"
echo "delta: ${MIB} MiB file, 5% of its bytes changed in N runs"
for runs in $SPREADS; do
    rm -rf "$WORK/root" "$WORK/in1" "$WORK/in2"
    mkdir -p "$WORK/in1" "$WORK/in2"
    cp "$WORK/v1.bin" "$WORK/in1/payload"
    cp "$WORK/v1.bin" "$WORK/in2/payload"
    run_bytes=$((BYTES / 20 / runs))
    for i in $(seq 0 $((runs - 1))); do
        head -c "$run_bytes" /dev/urandom |
            dd of="$WORK/in2/payload" bs=64K iflag=fullblock seek=$((i * BYTES / runs + BYTES / (2 * runs))) \
                oflag=seek_bytes conv=notrunc status=none
    done
    "$ARBOR" init --root --data "$WORK/root" >/dev/null 2>&1
    "$ARBOR" publish --data "$WORK/root" --tenant t --category c --id p --version 1 "$WORK/in1" >/dev/null 2>&1
    "$ARBOR" publish --data "$WORK/root" --tenant t --category c --id p --version 2 "$WORK/in2" --json 2>/dev/null |
        python3 -c "import json,sys; d=json.load(sys.stdin); print('N = %5d runs of %7d bytes: %5.1f%% of the update moves' % ($runs, $run_bytes, d['new_bytes'] * 100 / d['bytes']))"
done
