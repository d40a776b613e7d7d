#!/usr/bin/env bash
# How the simulator fares on a busy machine: runs a scenario (simulations/fleet-100k.toml
# unless one is named) with the release build on the machine as it is, then with one
# other CPU-bound process (a `yes` into /dev/null) running beside it, and prints each
# run's wall time, CPU seconds (user + system) and the 1-minute load average before it,
# then busy/quiet. With ARBOR_BASE naming another arbor binary (e.g. a release build of
# main), runs it too, in turn with this one in each condition, and says whether the two
# summaries (stdout of --json, and summary.json) are the same. Prints figures, asserts
# nothing. The load is what the rest of the machine was doing: read the figures beside it.
#
#   ARBOR_BASE=target-base/release/arbor benches/sim-busy.sh [SCENARIO.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:-simulations/fleet-100k.toml}
cargo build --release --quiet
ARBOR=$PWD/target/release/arbor
source benches/common.sh
work_dir arbor-sim-busy

builds=(this)
[ -n "${ARBOR_BASE:-}" ] && builds=(base this)
binary() { if [ "$1" = base ]; then echo "$ARBOR_BASE"; else echo "$ARBOR"; fi; }
load() { cut -d' ' -f1 /proc/loadavg; }

# Runs build $1 in condition $2; prints "WALL CPU LOAD" and leaves the summaries in
# $WORK/$1-$2.json and $WORK/$1-$2/summary.json.
run() {
    local bin out=$WORK/$1-$2 before t
    bin=$(binary "$1")
    before=$(load)
    t=$({
        TIMEFORMAT='%R %U %S'
        time "$bin" --json simulate "$SCENARIO" --out "$out" >"$out.json" 2>"$out.log"
    } 2>&1)
    awk -v t="$t" -v l="$before" 'BEGIN { split(t, f, " "); printf "%.1f %.1f %s\n", f[1], f[2] + f[3], l }'
}

declare -A wall cpu
for condition in quiet busy; do
    if [ "$condition" = busy ]; then
        yes >/dev/null &
        BUSY=$!
        PIDS+=("$BUSY")
    fi
    for build in "${builds[@]}"; do
        read -r w c l < <(run "$build" "$condition")
        wall[$build-$condition]=$w
        cpu[$build-$condition]=$c
        printf '%s, %s: %s s wall, %s CPU-s, load %s before\n' "$build" "$condition" "$w" "$c" "$l"
    done
    [ "$condition" = busy ] && kill "$BUSY"
done
for build in "${builds[@]}"; do
    printf '%s: busy/quiet %s (wall), %s (CPU)\n' "$build" \
        "$(calc "${wall[$build-busy]} / ${wall[$build-quiet]}" | awk '{ printf "%.2f", $1 }')" \
        "$(calc "${cpu[$build-busy]} / ${cpu[$build-quiet]}" | awk '{ printf "%.2f", $1 }')"
done
if [ -n "${ARBOR_BASE:-}" ]; then
    for condition in quiet busy; do
        if cmp -s "$WORK/base-$condition.json" "$WORK/this-$condition.json" &&
            cmp -s "$WORK/base-$condition/summary.json" "$WORK/this-$condition/summary.json"; then
            echo "$condition: the summaries of base and this are the same"
        else
            echo "$condition: the summaries of base and this DIFFER"
        fi
    done
fi
echo "load now: $(cut -d' ' -f1-3 /proc/loadavg)"
