#!/usr/bin/env bash
# End-to-end on a kind cluster: build and load the images, install the chart, start Kafka,
# run the word-count StreamJob, check exact counts, rescale, delete a worker pod, uninstall.
# Needs docker, kind, kubectl and helm. See e2e/README.md for what has been run where.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-streamjob-e2e}"
VERSION=0.1.0
WORKER_IMAGE="ghcr.io/streamjob/streamjob:${VERSION}"
OPERATOR_IMAGE="ghcr.io/streamjob/streamjob-operator:${VERSION}"
WORK="$(mktemp -d)"

log() { printf '[e2e-kind] %s\n' "$*"; }
fail() { log "FAIL: $*"; kubectl get sj,pods -A -o wide || true; exit 1; }

for tool in docker kind kubectl helm python3; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 2; }
done

cleanup() {
  if [[ "${KEEP_CLUSTER:-}" != "1" ]]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

log "cluster"
kind create cluster --name "$CLUSTER" --wait 120s
log "images"
docker build --target worker -t "$WORKER_IMAGE" .
docker build --target operator -t "$OPERATOR_IMAGE" .
kind load docker-image --name "$CLUSTER" "$WORKER_IMAGE" "$OPERATOR_IMAGE"

log "operator (helm)"
helm install streamjob charts/streamjob-operator --namespace streamjob-system --create-namespace \
  --set image.pullPolicy=Never --set worker.imagePullPolicy=Never --wait --timeout 180s
kubectl wait --for=condition=Established crd/streamjobs.streamjob.dev --timeout=60s

log "kafka"
kubectl create namespace kafka
kubectl apply -n kafka -f manifests/kafka/kafka.yaml
kubectl rollout status -n kafka statefulset/kafka --timeout=300s
kexec() { kubectl exec -n kafka kafka-0 -- "$@"; }
kexec_i() { kubectl exec -i -n kafka kafka-0 -- "$@"; }
for t in lines:4 word-counts:3; do
  kexec /opt/kafka/bin/kafka-topics.sh --bootstrap-server localhost:9092 --create \
    --topic "${t%%:*}" --partitions "${t##*:}" --replication-factor 1
done

# Known input: 5000 lines over a small vocabulary; expected counts computed here.
python3 - "$WORK/input.txt" "$WORK/expected.json" <<'PY'
import collections, json, random, sys
rnd = random.Random(11)
counts = collections.Counter()
with open(sys.argv[1], "w") as f:
    for _ in range(5000):
        words = [f"w{int(300 ** rnd.random())}" for _ in range(6)]
        counts.update(words)
        f.write(" ".join(words) + "\n")
json.dump(counts, open(sys.argv[2], "w"))
PY
kexec_i /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server localhost:9092 --topic lines < "$WORK/input.txt"

log "job"
kubectl apply -f e2e/kind/wordcount.yaml
kubectl wait sj/wc --for=jsonpath='{.status.phase}'=Running --timeout=300s || fail "job not Running"
kubectl get sj wc

# Final count per word (the last running count), compared with the expected counts.
check_counts() {
  local expected="$1" deadline=$((SECONDS + 180))
  while (( SECONDS < deadline )); do
    kexec /opt/kafka/bin/kafka-console-consumer.sh --bootstrap-server localhost:9092 \
      --topic word-counts --from-beginning --isolation-level read_committed \
      --timeout-ms 10000 > "$WORK/out.jsonl" 2>/dev/null || true
    if python3 - "$WORK/out.jsonl" "$expected" <<'PY'
import json, sys
finals = {}
for line in open(sys.argv[1]):
    v = json.loads(line)
    finals[v["word"]] = max(finals.get(v["word"], 0), v["count"])
want = json.load(open(sys.argv[2]))
sys.exit(0 if finals == want else 1)
PY
    then return 0; fi
    sleep 5
  done
  return 1
}
check_counts "$WORK/expected.json" || fail "counts differ"
log "exact counts"

log "rescale to 3"
kubectl patch sj wc --type merge -p '{"spec":{"parallelism":3}}'
kubectl wait sj/wc --for=jsonpath='{.status.desiredWorkers}'=3 --timeout=60s || fail "not rescaled"
kubectl wait sj/wc --for=jsonpath='{.status.phase}'=Running --timeout=300s || fail "not Running after rescale"

log "delete a worker pod"
kubectl delete pod wc-worker-1 --wait=false
sleep 5
kubectl wait sj/wc --for=jsonpath='{.status.phase}'=Running --timeout=300s || fail "job did not come back"
kubectl get sj wc
# The job runs again: new input is read from the committed offsets and counted.
echo "fresh fresh fresh" | kexec_i /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server localhost:9092 --topic lines
deadline=$((SECONDS + 120))
until kexec /opt/kafka/bin/kafka-console-consumer.sh --bootstrap-server localhost:9092 --topic word-counts \
    --from-beginning --isolation-level read_committed --timeout-ms 10000 2>/dev/null | grep -q '"word":"fresh"'; do
  (( SECONDS < deadline )) || fail "no output after the restart"
done
log "job came back"

log "uninstall"
kubectl delete sj wc --wait=true
helm uninstall streamjob --namespace streamjob-system --wait
log "ok"
