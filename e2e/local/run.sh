#!/usr/bin/env bash
# Local end-to-end (runs here and in CI): builds the binaries, starts a loopback Kafka
# broker and runs e2e.py. See e2e/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="$(./scripts/test-deps.sh)"
cargo build -q -p streamjob-worker --bin streamjob -p streamjob-operator
BIN_DIR="${CARGO_TARGET_DIR:-target}/debug"
./scripts/with-kafka.sh "$VENV/bin/python" e2e/local/e2e.py "$BIN_DIR"
