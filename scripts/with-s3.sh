#!/usr/bin/env bash
# Runs a command with an S3-compatible object store (moto's server, from the test venv) on
# loopback: starts it on a free port, creates the bucket `streamjob-test`, exports
# STREAMJOB_TEST_S3=s3://streamjob-test and the AWS_* variables object_store reads, runs
# "$@", and stops the server whatever happens. An S3 given in STREAMJOB_TEST_S3 is used as is.
set -euo pipefail
if [[ -n "${STREAMJOB_TEST_S3:-}" ]]; then exec "$@"; fi
VENV="$("$(dirname "$0")/test-deps.sh")"
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
LOG="$(mktemp -t streamjob-s3.XXXXXX)"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -f "$LOG"; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  if ! kill -0 "$SERVER" 2>/dev/null; then echo "S3 server failed to start:"; cat "$LOG"; exit 1; fi
  sleep 0.05
done
"$VENV/bin/python" - "$PORT" <<'PY'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/streamjob-test", method="PUT")
urllib.request.urlopen(req).read()
PY
echo "S3 (moto) on 127.0.0.1:$PORT, bucket streamjob-test" >&2
export STREAMJOB_TEST_S3="s3://streamjob-test"
export AWS_ENDPOINT="http://127.0.0.1:$PORT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
"$@"
