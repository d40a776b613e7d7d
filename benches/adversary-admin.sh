#!/usr/bin/env bash
# The admin API against slow connections (issue 25, point 9), on loopback; prints
# figures, asserts nothing.
#
# A root runs at an open-files limit of 1,024 (soft and hard) with a client under it
# (`--install-dir`). An attacker opens 1,000 connections to the root's admin port that
# send a header that never ends, and 100 that promise a 1 MB body and send a few bytes;
# each opens again a second after the root closes it. Printed, quiet against attacked:
#   - the token holder's `GET /api/status` (curl, a new connection each): median, max;
#   - from `arbor approve` to the update installed on the client;
#   - the root's open descriptors, and how long after the attack stops (the open
#     connections left to time out) until they are back;
#   - what the attack wrote to the root's log.
#   ARBOR_BENCH_CALLS=20 ARBOR=target/debug/arbor benches/adversary-admin.sh
set -euo pipefail

CALLS=${ARBOR_BENCH_CALLS:-20}
SLOW=1000
LIARS=100
cd "$(dirname "$0")/.."
if [ -z "${ARBOR:-}" ]; then
    cargo build --release --quiet
    ARBOR=$PWD/target/release/arbor
fi
source benches/common.sh
work_dir arbor-bench-admin

# The attacker's own connections.
ulimit -n "$(ulimit -Hn)"

cat >"$WORK/attack.py" <<'EOF'
# Slow connections against HOST:PORT until SIGUSR1; then holds what is open until the
# server closes it, prints how many connections were opened, and exits (at once on
# SIGTERM).
import asyncio, os, signal, sys
host, port, slow, liars = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
opened = 0
async def one(i, stop):
    global opened
    if i < slow:
        half = b"GET /api/status HTTP/1.1\r\nHost: x\r\nX-Slow: "
    else:
        half = b"POST /api/tokens HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{\"ttl"
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection(host, port)
            opened += 1
            w.write(half)
            await w.drain()
            while await r.read(1024):
                pass
            w.close()
        except OSError:
            pass
        try:
            await asyncio.wait_for(stop.wait(), 1)
        except asyncio.TimeoutError:
            pass
async def main():
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, stop.set)
    loop.add_signal_handler(signal.SIGTERM, lambda: (print(opened, flush=True), os._exit(0)))
    await asyncio.gather(*(one(i, stop) for i in range(slow + liars)))
    print(opened)
asyncio.run(main())
EOF

fds() { ls "/proc/$1/fd" | wc -l; }

# $CALLS status calls by the token holder, each given 10 s; prints "median max failed"
# (ms, over the calls answered).
status_calls() {
    local t fails=0 times=()
    for _ in $(seq "$CALLS"); do
        if t=$(curl -sf -o /dev/null --max-time 10 -w '%{time_total}' \
            -H "Authorization: Bearer $TOKEN" "$URL/api/status"); then
            times+=("$t")
        else
            fails=$((fails + 1))
        fi
    done
    if [ ${#times[@]} -eq 0 ]; then
        echo "- - $fails"
        return
    fi
    printf '%s\n' "${times[@]}" | awk '{ print $1 * 1000 }' | sort -n |
        awk -v f="$fails" '{a[NR]=$1} END { printf "%.1f %.1f %d\n", a[int((NR+1)/2)], a[NR], f }'
}

# Publishes version $1 and approves it, each command given 60 s; seconds until the
# client has it installed, or "never" after 120 s.
release() {
    mkdir -p "$WORK/v$1/bin"
    head -c $((2 << 20)) /dev/urandom >"$WORK/v$1/bin/payload"
    local update t0
    update=$(timeout 60 "$ARBOR" publish --data "$WORK/root" --tenant bench \
        --category data --id payload --version "$1" "$WORK/v$1" 2>/dev/null) || {
        echo "never (publish failed)"
        return 0
    }
    t0=$(now)
    timeout 60 "$ARBOR" approve --data "$WORK/root" "$update" --group all --subtree \
        >/dev/null 2>&1 || {
        echo "never (approve failed)"
        return 0
    }
    while [ "$(calc "$(now) - $t0 < 120")" = 1 ]; do
        if "$ARBOR" status --data "$WORK/client" --json 2>/dev/null | python3 -c "
import json, sys
m = (json.load(sys.stdin).get('installed') or {}).get('modules') or []
sys.exit(0 if m and (m[0].get('current') or {}).get('version') == '$1' else 1)"; then
            calc "$(now) - $t0"
            return 0
        fi
        sleep 0.02
    done
    echo "never (120 s)"
}

"$ARBOR" init --root --data "$WORK/root" >/dev/null 2>&1
start_arbor "$WORK/root" /ip4/127.0.0.1/tcp/0 prlimit --nofile=1024:1024
ROOT_PID=$LAST_PID
URL=$(cat "$WORK/root/admin.addr")
TOKEN=$(cat "$WORK/root/admin.token")
token=$("$ARBOR" token --data "$WORK/root" --client 2>/dev/null)
"$ARBOR" init --data "$WORK/client" --join "$token" >/dev/null 2>&1
"$ARBOR" run --data "$WORK/client" --listen /ip4/127.0.0.1/tcp/0 \
    --install-dir "$WORK/modules" 2>"$WORK/client.log" &
PIDS+=("$!")
for _ in $(seq 600); do [ -s "$WORK/client/admin.addr" ] && break; sleep 0.05; done

echo "arbor admin API under slow connections: root at 1,024 open files, $(nproc) cores, load $(uptime | sed 's/.*load average: //')"
quiet_fds=$(fds "$ROOT_PID")
read -r quiet_med quiet_max quiet_fail < <(status_calls)
quiet_install=$(release 1)

log_before=$(wc -c <"$WORK/root.log")
hostport=${URL#http://}
python3 "$WORK/attack.py" "${hostport%:*}" "${hostport##*:}" "$SLOW" "$LIARS" >"$WORK/opened" &
ATTACK=$!
PIDS+=("$ATTACK")
sleep 3 # let every attacker connect once
most=0
sample() { local n; n=$(fds "$ROOT_PID"); [ "$n" -gt "$most" ] && most=$n; true; }
sample
read -r attacked_med attacked_max attacked_fail < <(status_calls)
sample
attacked_install=$(release 2)
sample
alive=no; kill -0 "$ROOT_PID" 2>/dev/null && alive=yes

t0=$(now)
kill -USR1 "$ATTACK"
# The attacker ends once the root has closed all of its connections (or after 60 s).
closed_by_root=yes
for _ in $(seq 1200); do kill -0 "$ATTACK" 2>/dev/null || break; sleep 0.05; done
kill -0 "$ATTACK" 2>/dev/null && closed_by_root="no, the attacker was killed after 60 s"
kill "$ATTACK" 2>/dev/null || true
wait "$ATTACK" 2>/dev/null || true
for _ in $(seq 1200); do # 60 s at most
    [ "$(fds "$ROOT_PID")" -le $((quiet_fds + 8)) ] && break
    sleep 0.05
done
drained=$(calc "$(now) - $t0")
after_fds=$(fds "$ROOT_PID")
log_bytes=$(($(wc -c <"$WORK/root.log") - log_before))

echo "status call (ms, median / max of those answered within 10 s, of $CALLS): quiet $quiet_med / $quiet_max, $quiet_fail failed; under $SLOW slow + $LIARS lying connections $attacked_med / $attacked_max, $attacked_fail failed"
echo "approve to installed on the client (2 MiB): quiet $quiet_install s; attacked $attacked_install s"
echo "root open descriptors: $quiet_fds before, at most $most during the attack, $after_fds after; back $drained s after the attack stopped (slow connections closed by the root: $closed_by_root)"
echo "slow connections opened: $(cat "$WORK/opened"); root still running: $alive; root log grew $log_bytes bytes during the attack"
echo "root log lines about the admin API: $(grep -c "admin API" "$WORK/root.log" || true), the last two:"
grep -h "admin API" "$WORK/root.log" | tail -2 | sed 's/^/  /' || true
