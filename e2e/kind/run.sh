#!/usr/bin/env bash
# End-to-end on a kind cluster: build and load the images, install the chart, start Kafka and
# an S3 server, run the checkpointed exactly-once word-count StreamJob and check exact counts;
# rescale 2 -> 3 through a savepoint upgrade, kill a worker pod, and check after each that
# every word's running counts are exactly 1..n (nothing lost, nothing repeated); uninstall.
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

log "s3 (checkpoints and savepoints)"
kubectl create namespace s3
kubectl apply -n s3 -f manifests/s3/s3.yaml
kubectl rollout status -n s3 deployment/s3 --timeout=300s
kubectl run -n s3 mkbucket --rm -i --restart=Never --image=docker.io/curlimages/curl:8.11.1 -- \
  -sf -X PUT http://s3.s3.svc:5000/streamjob

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

# Known input, in batches of 5000 lines over a small vocabulary; the expected counts of
# everything produced so far are kept in $WORK/expected.json.
echo '{}' > "$WORK/expected.json"
produce_batch() {
  python3 - "$1" "$WORK/input.txt" "$WORK/expected.json" <<'PY'
import collections, json, random, sys
rnd = random.Random(int(sys.argv[1]))
counts = collections.Counter(json.load(open(sys.argv[3])))
with open(sys.argv[2], "w") as f:
    for _ in range(5000):
        words = [f"w{int(300 ** rnd.random())}" for _ in range(6)]
        counts.update(words)
        f.write(" ".join(words) + "\n")
json.dump(counts, open(sys.argv[3], "w"))
PY
  kexec_i /opt/kafka/bin/kafka-console-producer.sh --bootstrap-server localhost:9092 --topic lines < "$WORK/input.txt"
}
produce_batch 11

log "job"
kubectl apply -f e2e/kind/wordcount.yaml
kubectl wait sj/wc --for=jsonpath='{.status.phase}'=Running --timeout=300s || fail "job not Running"
kubectl get sj wc

# Every word's running counts in the committed output are exactly 1..n, and n is its
# expected count.
check_counts() {
  local expected="$1" deadline=$((SECONDS + 180))
  while (( SECONDS < deadline )); do
    kexec /opt/kafka/bin/kafka-console-consumer.sh --bootstrap-server localhost:9092 \
      --topic word-counts --from-beginning --isolation-level read_committed \
      --timeout-ms 10000 > "$WORK/out.jsonl" 2>/dev/null || true
    if python3 - "$WORK/out.jsonl" "$expected" <<'PY'
import collections, json, sys
seen = collections.defaultdict(list)
for line in open(sys.argv[1]):
    v = json.loads(line)
    seen[v["word"]].append(v["count"])
want = json.load(open(sys.argv[2]))
ok = {w: sorted(c) == list(range(1, len(c) + 1)) for w, c in seen.items()}
dups = [w for w, good in ok.items() if not good]
if dups:
    print("running counts not exactly 1..n for", dups[:5], file=sys.stderr)
finals = {w: len(c) for w, c in seen.items()}
sys.exit(0 if finals == want and not dups else 1)
PY
    then return 0; fi
    sleep 5
  done
  return 1
}
check_counts "$WORK/expected.json" || fail "counts differ"
log "exact counts"

log "savepoint upgrade: parallelism 2 -> 3 through the scale subresource"
kubectl scale sj wc --replicas 3
kubectl wait sj/wc --for=jsonpath='{.status.desiredWorkers}'=3 --timeout=120s || fail "not rescaled"
[[ "$(kubectl get --raw "/apis/streamjob.dev/v1alpha1/namespaces/default/streamjobs/wc/scale" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["replicas"])')" == 3 ]] ||
  fail "the scale subresource does not read 3 replicas"
deadline=$((SECONDS + 300))
until [[ -n "$(kubectl get sj wc -o jsonpath='{.status.lastSavepoint.path}')" &&
         -z "$(kubectl get sj wc -o jsonpath='{.status.upgrade.step}')" ]]; do
  (( SECONDS < deadline )) || fail "the savepoint upgrade did not finish"
  sleep 3
done
kubectl wait sj/wc --for=jsonpath='{.status.phase}'=Running --timeout=300s || fail "not Running after rescale"
log "restored from $(kubectl get sj wc -o jsonpath='{.status.restoredFrom}')"
produce_batch 12
check_counts "$WORK/expected.json" || fail "counts differ after the savepoint upgrade"
log "exact counts after the upgrade"

log "kill a worker pod"
kubectl delete pod wc-worker-1 --grace-period=0 --force --wait=false
produce_batch 13
sleep 5
kubectl wait sj/wc --for=jsonpath='{.status.phase}'=Running --timeout=300s || fail "job did not come back"
check_counts "$WORK/expected.json" || fail "counts differ after the pod was killed"
log "exact counts after recovery from the latest checkpoint"

log "uninstall"
kubectl delete sj wc --wait=true
helm uninstall streamjob --namespace streamjob-system --wait
log "ok"
