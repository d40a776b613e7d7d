#!/usr/bin/env bash
# The simulator against the network: runs simulations/branch-offices.toml in
# `arbor simulate`, and the same topology on network namespaces (benches/branch-offices.sh
# run A, as root), RUNS times each, and prints both completion times and their ratio.
# Prints figures, asserts nothing.
#
#   ARBOR_FIDELITY_RUNS=3 benches/sim-fidelity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${ARBOR_FIDELITY_RUNS:-3}
[ "$(id -u)" = 0 ] || { echo "run as root: the network half creates network namespaces" >&2; exit 1; }
cargo build --release --quiet
BIN=$PWD/target/release/arbor

predicted=$("$BIN" --json simulate simulations/branch-offices.toml |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["updates"][0]["groups"][0]["p100_s"])')

measured=()
for _ in $(seq "$RUNS"); do
    out=$(ARBOR_BIN=$BIN ARBOR_BENCH_RUNS=A ARBOR_BENCH_SITES=4 ARBOR_BENCH_LEAVES=4 ARBOR_BENCH_MIB=64 \
        ARBOR_BENCH_WAN=40mbit ARBOR_BENCH_LAN=400mbit ARBOR_BENCH_TMP=${ARBOR_BENCH_TMP:-/dev/shm} \
        benches/branch-offices.sh)
    echo "$out" | grep '^arbor A ' >&2
    measured+=("$(echo "$out" | awk '/^arbor A / { print $3; exit }')")
done
median=$(printf '%s\n' "${measured[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
printf 'branch-offices: simulated %.2f s, measured %.2f s (median of %d: %s), simulated/measured %.3f\n' \
    "$predicted" "$median" "$RUNS" "${measured[*]}" "$(echo "$predicted / $median" | bc -l)"
