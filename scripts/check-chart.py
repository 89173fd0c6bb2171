"""Offline checks of the Helm chart charts/streamjob-operator (no cluster, no helm binary).

  "$(./scripts/test-deps.sh)/bin/python" scripts/check-chart.py     (or: make check-chart)

- helm lint (strict) passes; Chart.yaml names the versions; every value in values.yaml is
  commented; values.schema.json is draft-07 and closed (additionalProperties: false) at every level.
- The chart's CRD is byte for byte crds/streamjob.yaml.
- The chart renders with its defaults and with several value sets; every rendered object passes
  `kubernetes-validate --strict -k 1.33.0` (except the ServiceMonitor, a Prometheus Operator CRD
  kind the Kubernetes schemas do not have), and the fields that matter are asserted: RBAC verbs
  exactly those of the operator's API calls, no wildcard, ClusterRole vs per-namespace Roles,
  the leader election Lease Role, leader election flag, probes, security context, images, env.
- Invalid values (unknown keys, wrong types, values outside an enum) are rejected by the schema.
- manifests/install.yaml (scripts/render-install.py) starts with the CRD and the Namespace and
  validates too. Whether it is up to date is checked by `make check-chart` with git diff.

Prints one line per check and closes with 'N passed, N failed'; exits non-zero on a failure."""
import json
import pathlib
import re
import subprocess
import sys
import tempfile

import helm_python
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "streamjob-operator"
RELEASE, NAMESPACE = "streamjob", "streamjob-system"
FULLNAME = "streamjob-operator"  # release "streamjob" is contained in the chart name
VERSION = "0.1.0"
KUBE_VALIDATE = [str(pathlib.Path(sys.executable).parent / "kubernetes-validate"),
                 "--strict", "--quiet", "-k", "1.33.0"]
# Kinds kubernetes-validate cannot know (custom resources of other projects).
NOT_IN_KUBERNETES_SCHEMAS = {"ServiceMonitor"}

# The RBAC the operator needs on StreamJobs and their children, from its API calls
# (operator/src/controller/): (apiGroup, resource) -> verbs.
JOB_RULES = {
    ("streamjob.dev", "streamjobs"): {"get", "list", "watch", "patch"},  # patch: the finalizer
    ("streamjob.dev", "streamjobs/status"): {"patch"},
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("", "secrets"): {"get", "create"},
    # pods of an older template, replaced at once; pods that cannot start, reported
    ("", "pods"): {"list", "watch", "deletecollection"},
    ("", "events"): {"list"},  # the StatefulSet's FailedCreate events
    ("policy", "poddisruptionbudgets"): {"create", "patch", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}

passed, failed = 0, 0


def check(name, fn):
    """Runs one check; an AssertionError (or any error) fails it and the run goes on."""
    global passed, failed
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        failed += 1
        msg = str(e)
        print(f"FAIL {name}: {type(e).__name__}: {msg[:2000]}{' ...' if len(msg) > 2000 else ''}")
    else:
        passed += 1
        print(f"ok   {name}")


def render(values):
    """Rendered objects, as a list of dicts, plus the NOTES.txt text."""
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    notes, objs = "", []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objs += [d for d in yaml.safe_load_all(text) if d]
    return objs, notes


def kube_validate(objs, label):
    objs = [o for o in objs if o["kind"] not in NOT_IN_KUBERNETES_SCHEMAS]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"{label}-") as f:
        yaml.safe_dump_all(objs, f)
        f.flush()
        r = subprocess.run(KUBE_VALIDATE + [f.name], capture_output=True, text=True)
    assert r.returncode == 0, f"kubernetes-validate rejected the {label} objects:\n{r.stdout}{r.stderr}"


def one(objs, kind, name=None, namespace=None):
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)
             and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, found {len(found)}"
    return found[0]


def kinds(objs):
    return sorted(o["kind"] for o in objs)


def rule_map(role):
    """(apiGroup, resource) -> verbs; fails on wildcards and on a pair spread over two rules."""
    out = {}
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert "*" not in rule.get(field, []), f"wildcard in {role['metadata']['name']}: {rule}"
        assert "nonResourceURLs" not in rule, f"nonResourceURLs in {role['metadata']['name']}"
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                out.setdefault((g, r), set()).update(rule["verbs"])
    return out


def container(objs):
    dep = one(objs, "Deployment", FULLNAME, NAMESPACE)
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, c


def env(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def assert_binding(objs, kind, name, namespace, role_kind, role_name, sa):
    b = one(objs, kind, name, namespace)
    assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name}, b["roleRef"]
    assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}], b["subjects"]


def assert_lease_role(objs, present, sa=FULLNAME):
    roles = [o for o in objs if o["kind"] in ("Role", "RoleBinding")
             and o["metadata"]["name"] == f"{FULLNAME}-leader-election"]
    if not present:
        assert not roles, "leader election is off but the Lease Role is rendered"
        assert not any(("coordination.k8s.io", "leases") in rule_map(o) for o in objs
                       if o["kind"] in ("Role", "ClusterRole")), "Lease access without leader election"
        return
    role = one(objs, "Role", f"{FULLNAME}-leader-election", NAMESPACE)
    assert rule_map(role) == LEASE_RULES, rule_map(role)
    _, c = container(objs)
    lease = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--lease-name="))
    for rule in role["rules"]:
        if rule["verbs"] != ["create"]:  # create cannot be limited by name
            assert rule.get("resourceNames") == [lease], f"get/update not limited to the Lease {lease}: {rule}"
    assert_binding(objs, "RoleBinding", f"{FULLNAME}-leader-election", NAMESPACE, "Role",
                   f"{FULLNAME}-leader-election", sa)
    assert not any(o["kind"] == "ClusterRole" and ("coordination.k8s.io", "leases") in rule_map(o)
                   for o in objs), "Lease access cluster-wide"


def assert_common(objs, sa=FULLNAME):
    """What holds for every value set."""
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"].get("namespace"), f"{o['kind']} {o['metadata']['name']} has no namespace"
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    for o in objs:
        if o["kind"] in ("Role", "ClusterRole"):
            rm = rule_map(o)
            assert ("streamjob.dev", "streamjobs/finalizers") not in rm, "finalizers rule (the finalizer is patched on the StreamJob itself)"
            assert ("", "secrets") not in rm or rm[("", "secrets")] == {"get", "create"}, "secrets beyond get/create"
    dep, c = container(objs)
    pod = dep["spec"]["template"]
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel.items() <= pod["metadata"]["labels"].items(), "selector does not match the pod labels"
    assert pod["spec"]["serviceAccountName"] == sa
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}], c["ports"]
    e = env(c)
    assert e["STREAMJOB_METRICS_ADDR"] == "0.0.0.0:8080"
    assert e["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}, e["POD_NAME"]
    assert e["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, e["POD_NAMESPACE"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, c["livenessProbe"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, c["readinessProbe"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}, sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    psc = pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    svc = one(objs, "Service", f"{FULLNAME}-metrics", NAMESPACE)
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items(), "Service selects no operator pod"
    (port,) = svc["spec"]["ports"]
    assert port["name"] == "metrics" and port["targetPort"] == "metrics"
    if sa == FULLNAME:
        one(objs, "ServiceAccount", sa, NAMESPACE)
    else:
        assert "ServiceAccount" not in kinds(objs), "ServiceAccount created although create is false"


def assert_cluster_mode(objs, sa=FULLNAME):
    role = one(objs, "ClusterRole", FULLNAME)
    assert rule_map(role) == JOB_RULES, f"ClusterRole rules {rule_map(role)}"
    for rule in role["rules"]:
        assert "resourceNames" not in rule
    assert_binding(objs, "ClusterRoleBinding", FULLNAME, None, "ClusterRole", FULLNAME, sa)
    assert [o for o in objs if o["kind"] == "Role" and "leader-election" not in o["metadata"]["name"]] == [], \
        "per-namespace Roles in all-namespaces mode"
    _, c = container(objs)
    assert "STREAMJOB_NAMESPACES" not in env(c), "STREAMJOB_NAMESPACES set: the operator would not watch all namespaces"


# ---------------------------------------------------------------------------------------------
# Static checks of the chart's files.

def check_chart_yaml():
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "streamjob-operator"
    assert meta["version"] == VERSION and meta["appVersion"] == VERSION, meta


def check_lint():
    report = helm_python.lint(CHART, strict=True, namespace=NAMESPACE)
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not bad, json.dumps(report, indent=1)


def check_crd_copy():
    a, b = (CHART / "crds" / "streamjob.yaml").read_bytes(), (ROOT / "crds" / "streamjob.yaml").read_bytes()
    assert a == b, "charts/streamjob-operator/crds/streamjob.yaml differs from crds/streamjob.yaml: run make chart-crds"
    with helm_python.Chart.load(CHART) as chart:
        crds = chart.crds
    assert [c["name"] for c in crds] == ["crds/streamjob.yaml"], [c["name"] for c in crds]
    assert crds[0]["data"].encode() == b, "Helm loads a different CRD text"


def check_schema_closed():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    open_at = []

    def walk(node, path):
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_at.append(path or "/")
            for k, v in node.items():
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}/{i}")
    walk(schema, "")
    assert not open_at, f"objects without additionalProperties: false at {open_at}"
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)  # the defaults satisfy it


def check_values_commented():
    # Every key has a comment line right above it, except inside Kubernetes objects given whole
    # (their fields are Kubernetes' own, documented there).
    whole = {"resources", "podSecurityContext", "securityContext"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    inside = None  # indentation of the Kubernetes object being skipped
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        if inside is not None and indent > inside:
            continue
        inside = indent if m.group(2) in whole else None
        if i == 0 or not lines[i - 1].lstrip().startswith("#"):
            missing.append(f"{i + 1}: {line.strip()}")
    assert not missing, f"values without a comment above them: {missing}"


# ---------------------------------------------------------------------------------------------
# Value sets.

def check_defaults():
    objs, notes = render(None)
    kube_validate(objs, "defaults")
    assert kinds(objs) == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                  "Service", "Deployment"]), kinds(objs)
    assert_common(objs)
    assert_cluster_mode(objs)
    assert_lease_role(objs, True)
    dep, c = container(objs)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert c["image"] == f"ghcr.io/streamjob/streamjob-operator:{VERSION}", c["image"]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"] == [f"--lease-name={FULLNAME}"], c["args"]
    e = env(c)
    assert e["STREAMJOB_LEADER_ELECTION"] == "true"
    assert e["STREAMJOB_WORKER_IMAGE"] == f"ghcr.io/streamjob/streamjob:{VERSION}", e["STREAMJOB_WORKER_IMAGE"]
    assert "STREAMJOB_IMAGE_PULL_POLICY" not in e and "STREAMJOB_WORKER_RESOURCES" not in e
    assert e["STREAMJOB_LOG_FORMAT"] == "text" and e["STREAMJOB_LOG"] == "info"
    assert e["STREAMJOB_MAX_WORKERS_PER_JOB"] == "256", e
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    assert "kubectl apply -f manifests/examples/wordcount.yaml" in notes, notes
    assert "kubectl get sj -w" in notes, notes
    assert "kubectl apply --server-side -f charts/streamjob-operator/crds/" in notes, notes


def check_watch_namespaces():
    objs, notes = render({"watchNamespaces": ["a", "b"]})
    kube_validate(objs, "watch-namespaces")
    assert_common(objs)
    assert not [o for o in objs if o["kind"].startswith("Cluster")], \
        f"cluster-wide RBAC although watchNamespaces is set: {kinds(objs)}"
    for ns in ("a", "b"):
        role = one(objs, "Role", FULLNAME, ns)
        assert rule_map(role) == JOB_RULES, f"Role in {ns}: {rule_map(role)}"
        assert_binding(objs, "RoleBinding", FULLNAME, ns, "Role", FULLNAME, FULLNAME)
    job_roles = sorted(o["metadata"]["namespace"] for o in objs
                       if o["kind"] == "Role" and o["metadata"]["name"] == FULLNAME)
    assert job_roles == ["a", "b"], job_roles
    assert_lease_role(objs, True)
    _, c = container(objs)
    assert env(c)["STREAMJOB_NAMESPACES"] == "a,b", env(c)
    assert "-n a -f manifests/examples/wordcount.yaml" in notes and "kubectl get sj -n a -w" in notes, notes


def check_two_replicas():
    # leaderElection.enabled false is overridden: two replicas must elect a leader.
    objs, _ = render({"replicaCount": 2, "leaderElection": {"enabled": False}})
    kube_validate(objs, "two-replicas")
    assert_common(objs)
    assert_cluster_mode(objs)
    assert_lease_role(objs, True)
    dep, c = container(objs)
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert env(c)["STREAMJOB_LEADER_ELECTION"] == "true", env(c)


def check_no_leader_election():
    objs, _ = render({"leaderElection": {"enabled": False}})
    kube_validate(objs, "no-leader-election")
    assert_common(objs)
    assert_cluster_mode(objs)
    assert_lease_role(objs, False)
    dep, c = container(objs)
    assert env(c)["STREAMJOB_LEADER_ELECTION"] == "false", env(c)
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "two unelected operators could overlap in a rollout"


def check_monitoring_and_worker_defaults():
    worker_resources = {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    values = {
        "metrics": {"service": {"port": 9090},
                    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}},
        "image": {"repository": "registry.example/ops/streamjob-operator", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "worker": {"image": {"repository": "registry.example/ops/streamjob", "tag": "0.1.0-rc1"},
                   "imagePullPolicy": "Always", "resources": worker_resources},
        "logFormat": "json", "logLevel": "info,kube=debug",
        "podAnnotations": {"example.com/team": "data"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "regcred"}],
    }
    objs, notes = render(values)
    kube_validate(objs, "monitoring")  # all but the ServiceMonitor (see NOT_IN_KUBERNETES_SCHEMAS)
    print("     (ServiceMonitor skipped by kubernetes-validate: a Prometheus Operator CRD kind)")
    assert_common(objs)
    assert_cluster_mode(objs)
    dep, c = container(objs)
    assert c["image"] == "registry.example/ops/streamjob-operator:0.1.0-rc1" and c["imagePullPolicy"] == "Always"
    e = env(c)
    assert e["STREAMJOB_WORKER_IMAGE"] == "registry.example/ops/streamjob:0.1.0-rc1", e
    assert e["STREAMJOB_IMAGE_PULL_POLICY"] == "Always", e
    assert json.loads(e["STREAMJOB_WORKER_RESOURCES"]) == worker_resources, e["STREAMJOB_WORKER_RESOURCES"]
    assert e["STREAMJOB_LOG_FORMAT"] == "json" and e["STREAMJOB_LOG"] == "info,kube=debug", e
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "data"}
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"] == values["tolerations"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    svc = one(objs, "Service", f"{FULLNAME}-metrics", NAMESPACE)
    assert svc["spec"]["ports"][0]["port"] == 9090
    sm = one(objs, "ServiceMonitor", FULLNAME, NAMESPACE)
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items(), \
        "the ServiceMonitor selects no Service"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}], sm["spec"]
    assert "ServiceMonitor" in notes


def check_existing_service_account():
    objs, _ = render({"serviceAccount": {"create": False, "name": "ops-sa"}})
    kube_validate(objs, "existing-sa")
    assert_common(objs, sa="ops-sa")
    assert_cluster_mode(objs, sa="ops-sa")
    assert_lease_role(objs, True, sa="ops-sa")


def check_rejected_values():
    bad = [
        ({"bogus": 1}, "'bogus' not allowed"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"tga": "1"}}, "'tga' not allowed"),
        ({"leaderElection": {"enabled": "yes"}}, "/leaderElection/enabled"),
        ({"watchNamespaces": "a,b"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"worker": {"resources": {"request": {"cpu": "1"}}}}, "'request' not allowed"),
        ({"worker": {"imagePullPolicy": "always"}}, "/worker/imagePullPolicy"),
        ({"securityContext": {"readOnlyRootFilesytem": True}}, "'readOnlyRootFilesytem' not allowed"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "'enable' not allowed"),
        ({"metrics": {"service": {"port": "8080"}}}, "/metrics/service/port"),
        ({"metrics": {"serviceMonitor": {"interval": "30"}}}, "/metrics/serviceMonitor/interval"),
        ({"serviceAccount": {"annotations": {"a": 1}}}, "/serviceAccount/annotations/a"),
    ]
    problems = []
    for values, expect in bad:
        try:
            render(values)
            problems.append(f"{values} rendered")
        except helm_python.HelmValuesError as e:
            if expect not in str(e):
                problems.append(f"{values}: error does not name {expect!r}: {e}")
        report = helm_python.lint(CHART, values)
        if not report["errors"]:
            problems.append(f"{values}: helm lint passed")
    assert not problems, "\n  ".join(problems)
    # A template-level requirement the schema cannot express.
    try:
        render({"serviceAccount": {"create": False}})
        raise AssertionError("serviceAccount.create false without a name rendered")
    except helm_python.HelmRenderError as e:
        assert "serviceAccount.name is required" in str(e), e


def check_validator_can_fail():
    # The Kubernetes schema check is strict: an unknown field in a rendered object is an error.
    objs, _ = render(None)
    _, c = container(objs)
    c["readinessProbe"]["httpGett"] = c["readinessProbe"].pop("httpGet")
    try:
        kube_validate(objs, "broken")
    except AssertionError:
        return
    raise AssertionError("kubernetes-validate accepted a Deployment with an unknown field")


def check_install_manifest():
    path = ROOT / "manifests" / "install.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs[0]["kind"] == "CustomResourceDefinition", "the CRD must come first"
    assert docs[0] == yaml.safe_load((ROOT / "crds" / "streamjob.yaml").read_text()), "CRD differs from crds/"
    assert docs[1] == {"apiVersion": "v1", "kind": "Namespace", "metadata": docs[1]["metadata"]}
    assert docs[1]["metadata"]["name"] == NAMESPACE
    objs, _ = render(None)
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, docs[2:])) == sorted(map(key, objs)), "install.yaml is not the default rendering"
    assert {json.dumps(o, sort_keys=True) for o in docs[2:]} == {json.dumps(o, sort_keys=True) for o in objs}, \
        "install.yaml objects differ from the default rendering: run make install-manifest"
    kube_validate(docs, "install")


def main():
    for name, fn in [
        ("Chart.yaml: apiVersion v2, version and appVersion 0.1.0", check_chart_yaml),
        ("helm lint --strict", check_lint),
        ("chart CRD is byte for byte crds/streamjob.yaml", check_crd_copy),
        ("values.schema.json: draft-07, closed at every level, accepts the defaults", check_schema_closed),
        ("values.yaml: every value commented", check_values_commented),
        ("defaults: all namespaces (ClusterRole), leader election, probes, security, images", check_defaults),
        ("watchNamespaces [a, b]: a Role+RoleBinding per namespace, no cluster-wide RBAC", check_watch_namespaces),
        ("replicaCount 2: leader election forced on", check_two_replicas),
        ("leaderElection off: no Lease Role, Recreate strategy", check_no_leader_election),
        ("ServiceMonitor, custom images, worker resources and pull policy, json logs", check_monitoring_and_worker_defaults),
        ("existing ServiceAccount: none created, roles bound to it", check_existing_service_account),
        ("invalid values are rejected by the schema (render and lint)", check_rejected_values),
        ("kubernetes-validate rejects an unknown field (the check can fail)", check_validator_can_fail),
        ("manifests/install.yaml: CRD, Namespace, then the default rendering; valid", check_install_manifest),
    ]:
        check(name, fn)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
