"""Local end-to-end of the operator binary against a stand-in API server (no Kubernetes here).

The stand-in (this file) speaks the Kubernetes REST API over plain HTTP on loopback, as far as
the operator uses it: lists and (idle) watches, GET, POST, server-side apply, merge patches,
the status subresource, events, and the scale subresource, which maps `spec.replicas` and
`status.replicas`/`selector` through the paths the checked-in CRD declares. Its only
"kubelet": pods for each StatefulSet replica, waiting in ImagePullBackOff when the image tag
is `does-not-exist`. Its only admission check: resource quantities must look like quantities
(the real API server refuses `cpu: lots` with 422). Everything else it stores as given.

Scenarios, each asserted on what the operator wrote:
  1. a child rejection: a job with `cpu: lots` gets Ready=False reason ChildRejected naming
     the StatefulSet and the server's message, and a ChildRejected event;
  2. a pod that cannot start: a job whose image does not exist gets DeploymentFailed with the
     ImagePullBackOff cause;
  3. a scale through the scale subresource: PUT .../scale replicas=3 sets spec.parallelism;
     the operator (which sees it only by reading the job afresh: the watches here stay idle)
     rolls out 3 workers, and the scale subresource then reads 3 replicas and the pods'
     selector from the status;
  4. /readyz is 200 once the watch has listed, /metrics counts reconciles.

usage: python operator_e2e.py BIN_DIR   (BIN_DIR holds streamjob-operator)
"""
import copy, http.server, json, os, pathlib, re, socket, subprocess, sys, tempfile, threading, time
import urllib.parse, urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.argv[1])
NS = "e2e"
QUANTITY = re.compile(r"^[+-]?[0-9.]+([eEinumkKMGTP]+[0-9]*)?$")


def log(msg):
    print(f"[operator-e2e] {msg}", flush=True)


def crd_scale_paths():
    crd = yaml.safe_load((ROOT / "crds/streamjob.yaml").read_text())
    return crd["spec"]["versions"][0]["subresources"]["scale"]


def get_path(obj, path):
    for part in path.strip(".").split("."):
        obj = (obj or {}).get(part)
    return obj


def set_path(obj, path, value):
    parts = path.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.objects = {}  # collection path -> name -> object
        self.version = 1
        self.events = []
        self.statuses = []  # (job, status) in order written
        self.stop = threading.Event()

    def bump(self):
        self.version += 1
        return str(self.version)


STORE = Store()
SCALE = crd_scale_paths()


def status_error(code, reason, message):
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                  "code": code, "message": message}


def quantities_ok(obj):
    """Every requests/limits value is a quantity (what the API server checks)."""
    bad = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("requests", "limits") and isinstance(v, dict):
                    for r, q in v.items():
                        if not QUANTITY.match(str(q)):
                            bad.append(f"{path}.{k}[{r}]: Invalid value: \"{q}\": quantities must match the regular expression")
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")
    walk(obj.get("spec", {}), "spec")
    return bad


def pods_of(sts):
    """The stand-in kubelet: one pod per replica, from the StatefulSet's template."""
    name = sts["metadata"]["name"]
    template = sts["spec"]["template"]
    image = template["spec"]["containers"][0].get("image", "")
    pods = []
    for i in range(sts["spec"].get("replicas", 0)):
        state = {"running": {"startedAt": "2026-12-01T10:00:00Z"}}
        if image.endswith(":does-not-exist"):
            state = {"waiting": {"reason": "ImagePullBackOff",
                                 "message": f"Back-off pulling image \"{image}\""}}
        pods.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-{i}", "namespace": NS,
                         "labels": dict(template["metadata"].get("labels", {}))},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "worker", "image": image, "imageID": "", "ready": False,
                 "restartCount": 0, "state": state}]},
        })
    return pods


def matches(labels, selector):
    for term in filter(None, (selector or "").split(",")):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        else:
            k, v = term.split("=", 1)
            if labels.get(k) != v:
                return False
    return True


class Api(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if os.environ.get("E2E_DEBUG"):
            sys.stderr.write("[api] " + fmt % args + "\n")

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw.strip() else {}

    def route(self):
        path, _, query = self.path.partition("?")
        params = dict(p.split("=", 1) if "=" in p else (p, "") for p in query.split("&") if p)
        # /api/v1/namespaces/NS/KIND[/NAME[/SUB]] or /apis/G/V/namespaces/NS/KIND[/NAME[/SUB]]
        parts = path.strip("/").split("/")
        base = 2 if parts[0] == "api" else 3
        if len(parts) < base + 3 or parts[base] != "namespaces":
            return path, None, None, None, params
        collection = "/" + "/".join(parts[:base + 3])
        name = parts[base + 3] if len(parts) > base + 3 else None
        sub = parts[base + 4] if len(parts) > base + 4 else None
        return path, collection, name, sub, params

    def do_GET(self):
        path, coll, name, sub, params = self.route()
        self.body()
        if coll is None:
            return self.reply(*status_error(404, "NotFound", path))
        if name is None and params.get("watch") in ("true", "1"):
            # An idle watch: the operator must read what changed itself.
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            STORE.stop.wait(int(params.get("timeoutSeconds", "290")))
            self.wfile.write(b"0\r\n\r\n")
            return
        with STORE.lock:
            if name is None:
                if coll.endswith("/pods"):
                    items = [p for s in STORE.objects.get(coll.replace("/api/v1", "/apis/apps/v1").replace("/pods", "/statefulsets"), {}).values()
                             for p in pods_of(s)]
                    selector = urllib.parse.unquote(params.get("labelSelector", ""))
                    items = [p for p in items if matches(p["metadata"]["labels"], selector)]
                else:
                    items = list(STORE.objects.get(coll, {}).values())
                return self.reply(200, {"apiVersion": "v1", "kind": "List",
                                        "metadata": {"resourceVersion": str(STORE.version)}, "items": items})
            obj = STORE.objects.get(coll, {}).get(name)
            if obj is None:
                return self.reply(*status_error(404, "NotFound", f"{name} not found"))
            if sub == "scale":
                return self.reply(200, scale_of(obj))
            return self.reply(200, obj)

    def do_POST(self):
        path, coll, name, sub, _ = self.route()
        body = self.body()
        with STORE.lock:
            if coll.endswith("/events"):
                STORE.events.append(body)
                return self.reply(201, body)
            name = body["metadata"]["name"]
            if name in STORE.objects.get(coll, {}):
                return self.reply(*status_error(409, "AlreadyExists", f"{name} exists"))
            body["metadata"].update(resourceVersion=STORE.bump(), uid=f"uid-{name}", generation=1)
            STORE.objects.setdefault(coll, {})[name] = body
            return self.reply(201, body)

    def do_PUT(self):
        path, coll, name, sub, _ = self.route()
        body = self.body()
        with STORE.lock:
            obj = STORE.objects.get(coll, {}).get(name)
            if obj is None:
                return self.reply(*status_error(404, "NotFound", f"{name} not found"))
            if sub == "scale":
                # The CRD's specReplicasPath says where replicas go.
                set_path(obj, SCALE["specReplicasPath"], body["spec"]["replicas"])
                obj["metadata"]["generation"] += 1
                obj["metadata"]["resourceVersion"] = STORE.bump()
                return self.reply(200, scale_of(obj))
            return self.reply(*status_error(405, "MethodNotAllowed", path))

    def do_PATCH(self):
        path, coll, name, sub, params = self.route()
        body = self.body()
        apply = self.headers.get("content-type", "").startswith("application/apply-patch")
        with STORE.lock:
            objs = STORE.objects.setdefault(coll, {})
            obj = objs.get(name)
            if sub == "status":
                obj["status"] = body["status"]
                obj["metadata"]["resourceVersion"] = STORE.bump()
                STORE.statuses.append((name, copy.deepcopy(body["status"])))
                return self.reply(200, obj)
            if not apply:  # merge patch (the finalizer)
                obj["metadata"].update({k: v for k, v in body.get("metadata", {}).items() if k != "resourceVersion"})
                obj["metadata"]["resourceVersion"] = STORE.bump()
                return self.reply(200, obj)
            bad = quantities_ok(body)
            if bad:
                kind = body["kind"]
                return self.reply(*status_error(
                    422, "Invalid", f"{kind}.apps \"{name}\" is invalid: " + "; ".join(bad)))
            generation = (obj or {}).get("metadata", {}).get("generation", 0)
            changed = obj is None or obj.get("spec") != body.get("spec")
            body.setdefault("metadata", {}).update(
                resourceVersion=STORE.bump(), uid=f"uid-{name}",
                generation=generation + 1 if changed else generation)
            if body.get("kind") == "StatefulSet":
                replicas = body["spec"].get("replicas", 0)
                body["status"] = {"replicas": replicas, "readyReplicas": 0, "updatedReplicas": replicas,
                                  "observedGeneration": body["metadata"]["generation"]}
            objs[name] = body
            return self.reply(200, body)

    def do_DELETE(self):
        path, coll, name, sub, _ = self.route()
        self.body()  # DeleteParams; read so the next request on this connection parses
        with STORE.lock:
            if name is None:
                return self.reply(200, {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})
            if STORE.objects.get(coll, {}).pop(name, None) is None:
                return self.reply(*status_error(404, "NotFound", f"{name} not found"))
            return self.reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def scale_of(job):
    return {"apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": job["metadata"]["name"], "namespace": NS},
            "spec": {"replicas": get_path(job, SCALE["specReplicasPath"])},
            "status": {"replicas": get_path(job, SCALE["statusReplicasPath"]) or 0,
                       "selector": get_path(job, SCALE["labelSelectorPath"]) or ""}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with STORE.lock:
            result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def job(name, spec):
    return {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1"},
            "spec": spec}


STEPS = [{"name": "src", "source": {"collection": {"values": ["a", "b"]}}},
         {"name": "out", "sink": {"print": {}}}]
JOBS = "/apis/streamjob.dev/v1alpha1/namespaces/e2e/streamjobs"
STS = "/apis/apps/v1/namespaces/e2e/statefulsets"


def condition(status, type_):
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def main():
    api_port, metrics_port = free_port(), free_port()
    STORE.objects[JOBS] = {
        "bad": job("bad", {"resources": {"requests": {"cpu": "lots"}}, "steps": STEPS}),
        "typo": job("typo", {"image": "streamjob:does-not-exist", "steps": STEPS}),
        "wc": job("wc", {"parallelism": 1, "steps": STEPS}),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", api_port), Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp()
    kubeconfig = pathlib.Path(tmp, "kubeconfig")
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": {"server": f"http://127.0.0.1:{api_port}"}}],
        "users": [{"name": "e2e", "user": {"token": "e2e"}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e", "namespace": NS}}],
    }))
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), STREAMJOB_LOG=os.environ.get("E2E_LOG", "info,kube=warn"))
    # A file, not a pipe: a pipe nobody reads would stop a chatty operator.
    log_file = open(pathlib.Path(tmp, "operator.log"), "w+")
    operator = subprocess.Popen(
        [str(BIN / "streamjob-operator"), "--namespace", NS, "--leader-election", "false",
         "--status-poll-seconds", "1", "--metrics-addr", f"127.0.0.1:{metrics_port}",
         "--worker-image", "streamjob:e2e"],
        env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    try:
        run_scenarios(api_port, metrics_port)
    except BaseException:
        operator.terminate()
        operator.wait(timeout=30)
        log_file.seek(0)
        out = log_file.read()
        log("operator log:\n" + (out if os.environ.get("E2E_DEBUG") else out[-6000:]))
        raise
    # SIGTERM: the controller stops (it would release a lease it held) and the process ends.
    operator.terminate()
    rc = operator.wait(timeout=30)
    STORE.stop.set()
    server.shutdown()
    assert rc == 0, f"operator exited with {rc} after SIGTERM"
    log("operator stopped cleanly on SIGTERM")
    log("passed")


def run_scenarios(api_port, metrics_port):
    # 1. A child the API server rejects.
    status = wait_for("bad: ChildRejected", lambda: next(
        (s for n, s in STORE.statuses if n == "bad" and condition(s, "Ready").get("reason") == "ChildRejected"), None))
    msg = condition(status, "Ready")["message"]
    assert "StatefulSet bad-worker was rejected by the API server" in msg and '"lots"' in msg, msg
    assert status["lastFailure"] == msg, status
    assert condition(status, "Degraded")["status"] == "True", status
    with STORE.lock:
        assert any(e["reason"] == "ChildRejected" and e["regarding"]["name"] == "bad" for e in STORE.events)
        assert "bad-spec" in STORE.objects["/api/v1/namespaces/e2e/configmaps"], "applied before the rejection"
        assert "bad-worker" not in STORE.objects.get(STS, {})
    log(f"child rejection reported: {msg[:120]}...")

    # 2. A pod that cannot start.
    status = wait_for("typo: DeploymentFailed", lambda: next(
        (s for n, s in STORE.statuses if n == "typo" and condition(s, "Degraded").get("reason") == "DeploymentFailed"), None))
    msg = condition(status, "Ready")["message"]
    assert "pod typo-worker-0: container worker: ImagePullBackOff" in msg, msg
    assert "ImagePullBackOff" in status["lastFailure"], status
    with STORE.lock:
        assert any(e["reason"] == "DeploymentFailed" and e["regarding"]["name"] == "typo" for e in STORE.events)
    log(f"pod that cannot start reported: {msg}")

    # 3. A scale through the scale subresource.
    wait_for("wc deployed", lambda: "wc-worker" in STORE.objects.get(STS, {}))
    scale = request(api_port, "GET", f"{JOBS}/wc/scale")
    assert scale["spec"]["replicas"] == 1, scale
    request(api_port, "PUT", f"{JOBS}/wc/scale",
            {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "wc"}, "spec": {"replicas": 3}})
    sts = wait_for("wc: 3 workers", lambda: (lambda s: s if s and s["spec"]["replicas"] == 3 else None)(
        STORE.objects.get(STS, {}).get("wc-worker")))
    scale = wait_for("scale status 3", lambda: (lambda s: s if s["status"]["replicas"] == 3 else None)(
        scale_of(STORE.objects[JOBS]["wc"])))
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert scale["status"]["selector"] and matches(labels, scale["status"]["selector"]), (scale, labels)
    log(f"scaled through the subresource: {scale['status']}")

    # 4. Health and metrics.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=10) as r:
        assert r.status == 200, r.status
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert re.search(r"^streamjob_operator_reconciles_total [1-9]", text, re.M), text
    assert "streamjob_operator_watches_down 0" in text, text
    log("readyz 200, metrics count reconciles")


if __name__ == "__main__":
    main()
