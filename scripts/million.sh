#!/usr/bin/env bash
# A million agents folded by one process with a bound on the agents in memory, and the posture
# read from the state it writes.
#   scripts/million.sh DIR [KEEP]
# DIR holds the generated events (ten zstd slices, about 680 MB, kept for the next run) and the
# state (about 10 GB: put DIR on a disk or a tmpfs with room, e.g. /dev/shm/million); KEEP is
# `--max-agents-in-memory` (default 100,000). SLICE_AGENTS (default 100,000) sizes each of
# the ten slices (a smaller fleet to try the script).
# The simulator holds a whole simulated day in memory (a million agents would take well over
# 13 GB), so the fleet is ten simulated 100,000-agent days (seeds 10-19), each agent's id (and
# each request id) made unique to its slice, one event in nine of each kept (about 20 per agent over the day), merged
# in event-time order. Every agent is active all day: with KEEP below a million nearly every
# event reads its agent back from the store (the worst case of the bound).
# Prints the fold's summary, its wall time and peak memory, the state's size, and the time and
# peak memory of three `guardian posture --state DIR --json` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:?usage: scripts/million.sh DIR [KEEP]}"
keep="${2:-100000}"
agents="${SLICE_AGENTS:-100000}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agent-guardian-target}"
command -v zstd >/dev/null || { echo "million: zstd is needed (apt-get install zstd)" >&2; exit 2; }
cargo build --release --locked --quiet
bin="$CARGO_TARGET_DIR/release/guardian"
mkdir -p "$dir/slices"
slice() {
  local k=$1 out="$dir/slices/s$1-$agents.jsonl.zst"
  [ -s "$out" ] && return 0
  "$bin" simulate --agents "$agents" --days 1 --seed $((10 + k)) 2>/dev/null \
    | awk 'NR % 9 == 0' \
    | sed -E "s/(fin|soc|eng)(-batch)?-([0-9]{5})/\1\2-${k}\3/g; s/\"req-/\"req-${k}-/g" \
    | zstd -q -1 -o "$out.tmp"
  mv "$out.tmp" "$out"
}
for k in 0 2 4 6 8; do
  slice "$k" & slice $((k + 1)) & wait
done
s="$dir/slices"
rm -rf "$dir/state"
LC_ALL=C sort -m -s -t, -k2,2 \
  <(zstd -dcq "$s/s0-$agents.jsonl.zst") <(zstd -dcq "$s/s1-$agents.jsonl.zst") <(zstd -dcq "$s/s2-$agents.jsonl.zst") \
  <(zstd -dcq "$s/s3-$agents.jsonl.zst") <(zstd -dcq "$s/s4-$agents.jsonl.zst") <(zstd -dcq "$s/s5-$agents.jsonl.zst") \
  <(zstd -dcq "$s/s6-$agents.jsonl.zst") <(zstd -dcq "$s/s7-$agents.jsonl.zst") <(zstd -dcq "$s/s8-$agents.jsonl.zst") \
  <(zstd -dcq "$s/s9-$agents.jsonl.zst") \
  | /usr/bin/time -f "fold: %e s wall, peak memory %M KB" \
    "$bin" replay --state "$dir/state" --max-agents-in-memory "$keep" - 2>&1 >/dev/null \
  | grep -E "^(replayed|at most|fold:)"
echo "state: $(du -sh "$dir/state" | cut -f1)"
for _ in 1 2 3; do
  /usr/bin/time -f "posture --state --json: %e s, peak memory %M KB" \
    "$bin" posture --state "$dir/state" --json 2>&1 >/dev/null | tail -1
done
