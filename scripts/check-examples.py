"""Validates StreamJob manifests against the CRD's own openAPIV3Schema, the way the API server
would with strict field validation (unknown fields rejected), using check-jsonschema.

usage: check-examples.py CRD_YAML --accept FILE... --reject FILE...
Every --accept file must validate; every --reject file must fail (proves the check can fail)."""
import json, re, subprocess, sys, tempfile, pathlib, yaml


def strict(node):
    # The API server prunes or (with --validate=strict) rejects unknown fields; JSON Schema
    # only does so with additionalProperties: false.
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)


def main(argv):
    crd = yaml.safe_load(pathlib.Path(argv[0]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = version["schema"]["openAPIV3Schema"]
    strict(schema)
    # metadata is validated by the API server itself, not by the CRD schema
    schema["properties"]["metadata"] = {"type": "object"}
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    schema["properties"]["apiVersion"] = {"enum": [f"{group}/{version['name']}"]}
    schema["properties"]["kind"] = {"enum": [kind]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "spec"})
    mode, files = None, {"--accept": [], "--reject": []}
    for a in argv[1:]:
        if a in files:
            mode = a
        else:
            files[mode].append(a)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(schema, f)
    failed = 0
    for path in files["--accept"] + files["--reject"]:
        docs = [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d]
        jobs = [d for d in docs if str(d.get("apiVersion", "")).startswith(group + "/")]
        if not jobs:
            continue
        for i, doc in enumerate(jobs):
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as d:
                json.dump(doc, d)
            r = subprocess.run([sys.executable, "-m", "check_jsonschema", "--schemafile", f.name, d.name],
                               capture_output=True, text=True)
            want_ok = path in files["--accept"]
            # a reject file names the error it must produce: `# expect: <substring>`; one
            # rejected by a CEL rule says `# expect-rule: <message>` instead, and is checked by
            # crds/tests/crd.rs (JSON Schema has no CEL)
            text = pathlib.Path(path).read_text()
            expect = re.findall(r"^# expect: (.*)$", text, re.M)
            if not want_ok and not expect and re.search(r"^# expect-rule: ", text, re.M):
                print(f"skip {path}[{i}]: a CEL rule rejects it (crds/tests/crd.rs evaluates those)")
                continue
            out = r.stdout + r.stderr
            if (r.returncode == 0) != want_ok or any(e not in out for e in expect):
                failed += 1
                print(f"FAIL {path}[{i}]: expected {'valid' if want_ok else 'rejected with ' + repr(expect)}\n{out}")
            else:
                print(f"ok   {path}[{i}] {'valid' if want_ok else 'rejected: ' + expect[0]}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
