# Shared by the benchmark scripts (sourced): arithmetic, medians, timestamps, a work
# directory, and starting and stopping daemons. Expects ARBOR (the binary).

calc() { awk "BEGIN { print $1 }"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Seconds since this file was sourced, to the millisecond: small enough for awk's six
# significant digits, which would round a Unix time by up to an hour.
ARBOR_BENCH_ORIGIN=$(date +%s)
now() { awk -v t="$(date +%s.%N)" -v o="$ARBOR_BENCH_ORIGIN" 'BEGIN { printf "%.3f\n", t - o }'; }

# Starts `arbor run` for node dir $1 listening on $2 in the background, behind the
# command prefix in the remaining arguments (e.g. ip netns exec NS); waits until its
# admin API is up. Sets LAST_PID.
start_arbor() {
    local dir=$1 listen=$2
    shift 2
    "$@" "$ARBOR" run --data "$dir" --listen "$listen" 2>"$dir.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for _ in $(seq 600); do
        [ -s "$dir/admin.addr" ] && return 0
        kill -0 "$LAST_PID" 2>/dev/null || { cat "$dir.log" >&2; return 1; }
        sleep 0.05
    done
    echo "node $dir did not start" >&2
    return 1
}

# Stops every daemon this script started (the array PIDS).
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

# Makes WORK, a new directory under /var/tmp named after $1, and sees that however the
# script ends (done, failed, interrupted), its daemons are stopped and WORK removed.
PIDS=()
work_dir() {
    WORK=$(mktemp -d "/var/tmp/$1.XXXXXX")
    trap 'stop_all; rm -rf "$WORK"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
