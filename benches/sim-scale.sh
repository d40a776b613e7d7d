#!/usr/bin/env bash
# How long the simulator takes and how much memory it needs: runs a scenario
# (simulations/fleet-100k.toml unless one is named) RUNS times with the release build
# and prints each run's wall time and peak RSS, then their medians, with the scenario's
# node count. Prints figures, asserts nothing.
#
#   ARBOR_SCALE_RUNS=3 benches/sim-scale.sh [SCENARIO.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${ARBOR_SCALE_RUNS:-1}
SCENARIO=${1:-simulations/fleet-100k.toml}
cargo build --release --quiet
BIN=$PWD/target/release/arbor

python3 - "$BIN" "$SCENARIO" "$RUNS" <<'EOF'
import json, resource, statistics, subprocess, sys, time

binary, scenario, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
walls, peaks = [], []
for run in range(runs):
    start = time.monotonic()
    # Each run in its own child, so that the peak RSS read after it is its own.
    probe = (
        "import resource, subprocess, sys\n"
        "out = subprocess.run(sys.argv[1:], check=True, capture_output=True).stdout\n"
        "sys.stdout.buffer.write(out)\n"
        "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, binary, "--json", "simulate", scenario],
        check=True, capture_output=True,
    )
    wall = time.monotonic() - start
    peak_gib = int(done.stderr.decode().split()[-1]) / 1024 / 1024
    summary = json.loads(done.stdout)
    walls.append(wall)
    peaks.append(peak_gib)
    print(f"run {run + 1}: {wall:.1f} s wall, {peak_gib:.2f} GiB peak RSS, "
          f"{summary['nodes']} nodes, {summary['simulated_s']:.0f} s simulated")
print(f"{scenario}: median {statistics.median(walls):.1f} s wall, "
      f"{statistics.median(peaks):.2f} GiB peak RSS over {runs} run(s)")
EOF
