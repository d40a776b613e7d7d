#!/usr/bin/env bash
# The simulator against the network, on two topologies with clients installing:
#   A  branch nodes: simulations/branch-offices.toml and benches/branch-offices.sh run A;
#   B  no branch node, each site's clients sharing as siblings behind its WAN link:
#      simulations/branch-offices-siblings.toml and benches/branch-offices.sh run B.
# Simulates each once (the simulator is deterministic) and runs both on network
# namespaces RUNS times (as root; A and B in turn in each run, so that both see the
# same load). Prints one table: the simulated seconds until every client has
# installed, the measured median and each run, their ratio, and the median client's
# install time in the runs (its log: from holding every chunk to installed), which the
# scenarios model as 64 MiB at the rate of 16 installs at once on this machine; then
# the machine's load average (1 minute) before each run. Prints figures, asserts
# nothing.
#
#   ARBOR_FIDELITY_RUNS=3 benches/sim-fidelity.sh
#
# The bench's 21 daemons share this machine's cores, which the simulator does not
# model (each node is a machine of its own): the network half runs at a raised
# priority (nice -10) so that other work on the machine slows it less, and its files
# are in ARBOR_BENCH_TMP (default /dev/shm: no disk in the figures, as the scenarios'
# install rates assume).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${ARBOR_FIDELITY_RUNS:-3}
[ "$(id -u)" = 0 ] || { echo "run as root: the network half creates network namespaces" >&2; exit 1; }
cargo build --release --quiet
ARBOR=$PWD/target/release/arbor
source benches/common.sh

# The bench's parameters, which the two scenarios state too.
export ARBOR_BIN=$ARBOR ARBOR_BENCH_RUNS="A B" ARBOR_BENCH_SITES=4 ARBOR_BENCH_LEAVES=4 \
    ARBOR_BENCH_MIB=64 ARBOR_BENCH_WAN=40mbit ARBOR_BENCH_LAN=400mbit \
    ARBOR_BENCH_TMP=${ARBOR_BENCH_TMP:-/dev/shm}
declare -A scenario=([A]=simulations/branch-offices.toml [B]=simulations/branch-offices-siblings.toml)
declare -A simulated measured installs
for t in A B; do
    simulated[$t]=$("$ARBOR" --json simulate "${scenario[$t]}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["updates"][0]["groups"][0]["p100_s"])')
done

loads=()
for _ in $(seq "$RUNS"); do
    loads+=("$(cut -d' ' -f1 /proc/loadavg)")
    out=$(nice -n -10 benches/branch-offices.sh)
    echo "$out" | grep -E '^(arbor|installs) ' >&2
    for t in A B; do
        measured[$t]+="$(echo "$out" | awk -v t="$t" '$1 == "arbor" && $2 == t { print $3; exit }') "
        installs[$t]+="$(echo "$out" | awk -v t="$t" '$1 == "installs" && $2 == t { print $3; exit }') "
    done
done

printf '\n%-32s %9s %9s  %-22s %6s %9s\n' topology simulated measured "(runs)" ratio installs
for t in A B; do
    med=$(printf '%s\n' ${measured[$t]} | median)
    printf '%-32s %8.2fs %8.2fs  %-22s %6.3f %8.2fs\n' "$t $(basename "${scenario[$t]}" .toml)" \
        "${simulated[$t]}" "$med" "(${measured[$t]% })" "$(calc "${simulated[$t]} / $med")" \
        "$(printf '%s\n' ${installs[$t]} | median)"
done
echo "load average (1 minute) before each run: ${loads[*]}; $(nproc) cores"
