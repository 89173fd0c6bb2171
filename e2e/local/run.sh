#!/usr/bin/env bash
# Local end-to-end (runs here and in CI): builds the binaries, runs the operator against a
# stand-in API server (operator_e2e.py), then starts a loopback Kafka broker and runs e2e.py.
# See e2e/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(./scripts/test-deps.sh)"
cargo build -q -p streamjob-worker --bin streamjob -p streamjob-operator
BIN_DIR="${CARGO_TARGET_DIR:-target}/debug"
"$VENV/bin/python" e2e/local/operator_e2e.py "$BIN_DIR"
./scripts/with-kafka.sh "$VENV/bin/python" e2e/local/e2e.py "$BIN_DIR"
