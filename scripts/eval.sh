#!/usr/bin/env bash
# Detection quality on a labelled fleet the project did not write (../shared/eval by default):
# builds the release binary, writes the owner's configuration (the shipped blueprints with only the
# calendar set), replays the fleet and prints the scorer's table. Exits 2 when the fleet is absent.
#   scripts/eval.sh [EVAL_DIR] [OUT_DIR]
# OUT_DIR keeps incidents.jsonl, score.txt and score.json (default: a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
ev="${1:-${GUARDIAN_EVAL_DIR:-../shared/eval}}"
out="${2:-$(mktemp -d)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agent-guardian-target}"
if [ ! -f "$ev/score.py" ] || ! ls "$ev"/*.labels.jsonl >/dev/null 2>&1; then
  echo "eval: no labelled fleet at $ev" >&2
  exit 2
fi
command -v zstd >/dev/null || { echo "eval: zstd is needed to read the fleet (apt-get install zstd)" >&2; exit 2; }
[ -n "${GUARDIAN_BIN:-}" ] || cargo build --release --locked --quiet
bin="${GUARDIAN_BIN:-$CARGO_TARGET_DIR/release/guardian}"
mkdir -p "$out"
for labels in "$ev"/*.labels.jsonl; do
  name=$(basename "$labels" .labels.jsonl)
  data="$ev/$name.jsonl.zst"
  python3 "$ev/customer_config.py" blueprints "$out/config"
  zstd -d -q --long=27 -c "$data" \
    | "$bin" replay --blueprints "$out/config/blueprints" --assign "$out/config/assign.json" - \
      >"$out/$name.incidents.jsonl" 2>"$out/$name.replay.log"
  python3 "$ev/score.py" "$labels" "$out/$name.incidents.jsonl" --json "$out/$name.score.json" \
    | tee "$out/$name.score.txt"
done
echo "eval: results in $out" >&2
