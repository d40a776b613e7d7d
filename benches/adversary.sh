#!/usr/bin/env bash
# An adversary against real daemons (issue 25), on loopback; prints figures, asserts
# only the generous bounds of the tests it runs.
#
#   1  strangers: 1,000 streams announcing 64 MiB frames; the attacked node's memory
#      before, during and after, and how soon a new child is served meanwhile;
#   3  a parent that announces chunks and answers MISSING, or answers with invalid
#      headers: requests in the first and the second 10 s, and the leaf's CPU;
#   4  a flood of refused requests from strangers for a minute: the log it wrote;
#   6  a frozen parent (SIGSTOP): how soon its child says so; a sibling that announces
#      everything, pings and never answers: what it costs its site over a leaf alone;
#   9  the admin API under 1,000 slow connections (benches/adversary-admin.sh).
# Also: a child sending 200,000 parent-only frames (cut off, banned, its log).
#
# The daemons are release builds (tests/adversary.rs in the release profile). The
# machine is shared: its load is printed before and after.
#   benches/adversary.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "load before: $(uptime)"
echo "== the adversary tests (release)"
ARBOR_FLOOD_SECS=${ARBOR_FLOOD_SECS:-60} cargo test --release --locked --quiet \
    --test adversary -- --nocapture --test-threads=1 2>&1 |
    sed -n 's/^.*figure: //p' | sort
echo
echo "== 9: the admin API under slow connections"
benches/adversary-admin.sh
echo "load after: $(uptime)"
