#!/usr/bin/env bash
# Validates against the Kubernetes 1.33 OpenAPI schemas (strict: unknown fields rejected):
# the CRD, the example Kafka, and every object the operator generates for each example and
# end-to-end StreamJob.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(./scripts/test-deps.sh)"
KV=("$VENV/bin/kubernetes-validate" --strict --quiet -k 1.33.0)
OUT="$(mktemp -d)"; trap 'rm -rf "$OUT"' EXIT
cargo build -q -p streamjob-operator
OPERATOR="${CARGO_TARGET_DIR:-target}/debug/streamjob-operator"
"${KV[@]}" crds/streamjob.yaml
"${KV[@]}" manifests/kafka/kafka.yaml manifests/s3/s3.yaml
for f in manifests/examples/*.yaml e2e/kind/*.yaml; do
  "$OPERATOR" render "$f" > "$OUT/$(basename "$f")"
  "${KV[@]}" "$OUT/$(basename "$f")"
  echo "ok   $f: $(grep -c '^kind:' "$OUT/$(basename "$f")") generated objects valid"
done
