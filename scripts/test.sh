#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property, scenario, allocation and CLI tests.
# Needs only the Rust toolchain. Builds go to a persistent target dir outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agent-guardian-target}"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --release --locked
cargo test --locked
