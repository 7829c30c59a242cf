#!/usr/bin/env bash
# Detection quality on a labelled fleet the project did not write (../shared/eval by default):
# builds the release binary, writes the owner's configuration (the shipped blueprints with only the
# calendar set), replays the fleet into a state directory, prints the scorer's table, then the
# ranking AUC of the posture's risk (attacked agents above clean ones) and the fleet's level.
# Exits 2 when the fleet is absent. The suite's gate is tests/eval_fleet.rs.
#   scripts/eval.sh [EVAL_DIR] [OUT_DIR]
# OUT_DIR keeps incidents.jsonl, score.txt and score.json (default: a temporary directory).
# GUARDIAN_REPLAY_ARGS: more options for the replay (e.g. `--max-agents-in-memory 30`).
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
  rm -rf "$out/$name.state"
  zstd -d -q --long=27 -c "$data" \
    | "$bin" replay --blueprints "$out/config/blueprints" --assign "$out/config/assign.json" \
      --state "$out/$name.state" ${GUARDIAN_REPLAY_ARGS:-} - >"$out/$name.incidents.jsonl" 2>"$out/$name.replay.log"
  python3 "$ev/score.py" "$labels" "$out/$name.incidents.jsonl" --json "$out/$name.score.json" \
    | tee "$out/$name.score.txt"
  "$bin" posture --state "$out/$name.state" --json --limit 100000 >"$out/$name.posture.json"
  python3 - "$labels" "$out/$name.posture.json" <<'PY' | tee -a "$out/$name.score.txt"
import json, sys
attacked = {json.loads(l)["agent_id"] for l in open(sys.argv[1]) if json.loads(l)["expect"] == "alert"}
p = json.load(open(sys.argv[2]))
risk = [(a["agent_id"] in attacked, a["risk"]) for a in p["agents"]]
pos = [r for a, r in risk if a]; neg = [r for a, r in risk if not a]
auc = sum((x > y) + 0.5 * (x == y) for x in pos for y in neg) / max(1, len(pos) * len(neg))
f = p["fleet"]
print(f"posture: ranking AUC {auc:.3} ({len(pos)} attacked, {len(neg)} clean agents); "
      f"fleet risk {f['score']} ({f['level']}); {f['by_status'].get('killed', 0)} killed")
PY
done
echo "eval: results in $out" >&2
