"""Local end-to-end: the Kubernetes scenario without Kubernetes.

Kafka in and out on a loopback broker (STREAMJOB_TEST_KAFKA), the word-count StreamJob
rendered by the operator (`streamjob-operator render`), and its StatefulSet's pods run as local
processes with exactly the generated args, env and ConfigMap content. Each pod's DNS name is
mapped to its own loopback address (127.0.<i>.1), the only thing that differs from a cluster.
Asserts exact final counts in the output topic.

usage: python e2e.py BIN_DIR   (BIN_DIR holds streamjob and streamjob-operator)
"""
import collections, json, os, pathlib, random, socket, subprocess, sys, tempfile, time

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BIN = pathlib.Path(sys.argv[1])
BROKER = os.environ["STREAMJOB_TEST_KAFKA"]
RUN = f"e2e{os.getpid()}"
IN, OUT = f"{RUN}-lines", f"{RUN}-counts"
LINES = 20_000


def log(msg):
    print(f"[e2e-local] {msg}", flush=True)


def create_topics():
    admin = AdminClient({"bootstrap.servers": BROKER})
    for f in admin.create_topics([NewTopic(IN, 4, 1), NewTopic(OUT, 3, 1)]).values():
        f.result(30)


def produce():
    rnd = random.Random(7)
    counts = collections.Counter()
    p = Producer({"bootstrap.servers": BROKER, "linger.ms": 5})
    for i in range(LINES):
        words = [f"Word{int(500 ** rnd.random())}" for _ in range(6)]
        counts.update(w.lower() for w in words)
        p.produce(IN, " ".join(words).encode(), partition=i % 4)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0, "input not fully delivered"
    return counts


def render(spec_path):
    out = subprocess.run([BIN / "streamjob-operator", "render", str(spec_path), "--namespace", "e2e"],
                         check=True, capture_output=True, text=True).stdout
    return {d["kind"]: d for d in yaml.safe_load_all(out) if d}


def pod_env(container, pod, token):
    env = {"PATH": os.environ.get("PATH", "")}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        src = e["valueFrom"]
        if "fieldRef" in src:
            env[e["name"]] = {"metadata.name": pod, "metadata.namespace": "e2e"}[src["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in src:
            env[e["name"]] = token
        else:
            raise SystemExit(f"env {e['name']}: unmapped source {src}")
    return env


def start_pods(objs, work):
    cm, sts = objs["ConfigMap"], objs["StatefulSet"]
    spec_file = work / "streamjob.yaml"
    spec_file.write_text(cm["data"]["streamjob.yaml"])
    container = sts["spec"]["template"]["spec"]["containers"][0]
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    pods = []
    for i in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{i}"
        args = list(container["args"])
        args[1] = str(spec_file)
        args[args.index("--port") + 1] = str(port)
        args[args.index("--peer-pattern") + 1] = "127.0.{i}.1:{port}"
        args += ["--listen", f"127.0.{i}.1:{port}"]
        logf = open(work / f"{pod}.log", "w")
        pods.append(subprocess.Popen([BIN / "streamjob", *args], env=pod_env(container, pod, "e2e-token"),
                                     stdout=logf, stderr=subprocess.STDOUT))
        log(f"started pod {pod}")
    return pods


def read_counts(expected_records, timeout=120):
    c = Consumer({"bootstrap.servers": BROKER, "group.id": f"{RUN}-check",
                  "enable.auto.commit": False, "isolation.level": "read_committed"})
    c.assign([TopicPartition(OUT, p, 0) for p in range(3)])
    finals, seen, partition_of = {}, 0, {}
    deadline = time.time() + timeout
    while seen < expected_records and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        v = json.loads(m.value())
        w, n = v["word"], v["count"]
        assert m.key().decode() == w, "records are keyed by word"
        assert partition_of.setdefault(w, m.partition()) == m.partition(), f"{w} moved partitions"
        assert n == finals.get(w, 0) + 1, f"{w}: {n} after {finals.get(w, 0)}"
        finals[w] = n
        seen += 1
    c.close()
    return finals, seen


def main():
    work = pathlib.Path(tempfile.mkdtemp(prefix="streamjob-e2e-"))
    create_topics()
    expected = produce()
    log(f"produced {LINES} lines ({sum(expected.values())} words) to {IN}")
    job = yaml.safe_load((pathlib.Path(__file__).parents[2] / "manifests/examples/kafka-wordcount.yaml").read_text())
    job["metadata"]["name"] = "wc"
    for step in job["spec"]["steps"]:
        for k in (step.get("source") or {}, step.get("sink") or {}):
            if "kafka" in k:
                kk = k["kafka"]
                kk["bootstrapServers"] = BROKER
                kk.pop("properties", None)
                kk.pop("secretProperties", None)
                if "topics" in kk:
                    kk.update(topics=[IN], groupId=f"{RUN}-wc", startingOffsets="earliest")
                    kk.pop("committedFallback", None)
                else:
                    kk.update(topic=OUT, transactionalIdPrefix=f"{RUN}-tx", commitIntervalMs=500)
    spec_path = work / "job.yaml"
    spec_path.write_text(yaml.safe_dump(job))
    objs = render(spec_path)
    log(f"rendered {', '.join(sorted(objs))}; {objs['StatefulSet']['spec']['replicas']} worker pods")
    pods = start_pods(objs, work)
    try:
        finals, seen = read_counts(sum(expected.values()))
        for i, p in enumerate(pods):
            if p.poll() is not None:
                raise SystemExit(f"pod {i} exited with {p.returncode}: see {work}")
        if finals != dict(expected):
            missing = {w: (expected[w], finals.get(w)) for w in expected if finals.get(w) != expected[w]}
            raise SystemExit(f"counts differ after {seen} records: {list(missing.items())[:10]}")
        log(f"exact counts for {len(finals)} words ({seen} running counts, exactly once, keyed)")
    finally:
        for p in pods:
            p.kill()
            p.wait()
    log("ok")


if __name__ == "__main__":
    main()
