#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, scenario, allocation, CLI, doc tests,
# in-process Kafka (mock cluster) tests, and end-to-end tests against a Tansu broker process that
# this script installs (PyPI wheel, seconds) and starts on loopback, and CEF through rsyslog
# (Debian packages, installed by scripts/packages.sh).
# Needs only the Rust toolchain and Python's pip. Builds go to a persistent target dir outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agent-guardian-target}"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --release --locked
scripts/packages.sh
scripts/python-peers.sh
log=$(mktemp)
port=$((20000 + RANDOM % 20000))
eval "$(scripts/tansu.sh start "$port")"
trap 'rm -f "$log"; scripts/tansu.sh stop "$TANSU_PID"' EXIT
export TANSU_BIN TANSU_BROKER="127.0.0.1:$port" GUARDIAN_REQUIRE_E2E=1
export TANSU_DURABLE_BIN="$(scripts/tansu.sh durable-bin)"
cargo test --locked 2>&1 | tee "$log"
# One closing line for the whole run: totals over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
