//! Spec -> owned objects, as plain data.

use k8s_openapi::api::core::v1::Container;
use streamjob_crds::graph::to_logical_graph;
use streamjob_crds::spec::StreamJob;
use streamjob_crds::validate::parse_job;
use streamjob_operator::resources::{self, Children, Defaults};

pub fn job(yaml_spec: &str) -> StreamJob {
    let mut job = parse_job(&format!(
        "apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\nmetadata:\n  name: wc\n  namespace: prod\nspec:\n{yaml_spec}"
    ))
    .unwrap();
    job.metadata.uid = Some("uid-1".into());
    job.metadata.generation = Some(3);
    job
}

const STEPS: &str = "  steps:
    - {name: src, source: {collection: {values: [a, b]}}}
    - {name: words, flatMap: {expr: value.words()}, parallelism: 5}
    - {name: by, keyBy: {expr: value}}
    - {name: n, reduce: {expr: acc}}
    - {name: out, sink: {print: {}}}
";

fn build(job: &StreamJob) -> Children {
    let plan = to_logical_graph(job).plan().unwrap();
    resources::children(
        job,
        &plan,
        &Defaults {
            worker_image: "streamjob:test".into(),
            image_pull_policy: None,
            worker_resources: None,
        },
    )
    .unwrap()
}

fn container(c: &Children) -> &Container {
    &c.stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

#[test]
fn replicas_come_from_the_plan_and_slots() {
    // highest parallelism 5 (the flatMap), 1 slot per worker -> 5 workers
    let c = build(&job(&format!("  parallelism: 2\n{STEPS}")));
    assert_eq!(c.workers, 5);
    assert_eq!(c.stateful_set.spec.as_ref().unwrap().replicas, Some(5));
    let c = build(&job(&format!(
        "  parallelism: 2\n  slotsPerWorker: 2\n{STEPS}"
    )));
    assert_eq!(c.workers, 3);
    let args = container(&c).args.clone().unwrap();
    assert_eq!(
        args,
        [
            "worker",
            "/etc/streamjob/streamjob.yaml",
            "--workers",
            "3",
            "--slots",
            "2",
            "--port",
            "6121",
            "--peer-pattern",
            "{job}-worker-{i}.{job}-workers.{namespace}.svc:{port}",
            "--idle-after-finish"
        ]
    );
}

#[test]
fn suspended_jobs_scale_to_zero_without_a_pdb() {
    let c = build(&job(&format!("  state: suspended\n{STEPS}")));
    assert_eq!(c.stateful_set.spec.as_ref().unwrap().replicas, Some(0));
    assert_eq!(c.workers, 5);
    assert!(c.pdb.is_none());
    let running = build(&job(STEPS));
    assert_eq!(
        running.pdb.unwrap().spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
}

#[test]
fn children_are_owned_labelled_and_named_after_the_job() {
    let c = build(&job(STEPS));
    for meta in [
        &c.config_map.metadata,
        &c.service.metadata,
        &c.stateful_set.metadata,
    ] {
        assert_eq!(meta.namespace.as_deref(), Some("prod"));
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("StreamJob", "wc", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/instance"],
            "wc"
        );
    }
    assert_eq!(c.config_map.metadata.name.as_deref(), Some("wc-spec"));
    assert_eq!(c.service.metadata.name.as_deref(), Some("wc-workers"));
    assert_eq!(c.stateful_set.metadata.name.as_deref(), Some("wc-worker"));
    let sts = c.stateful_set.spec.as_ref().unwrap();
    assert_eq!(sts.service_name.as_deref(), Some("wc-workers"));
    assert_eq!(sts.pod_management_policy.as_deref(), Some("Parallel"));
    let svc = c.service.spec.as_ref().unwrap();
    assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
    assert_eq!(svc.publish_not_ready_addresses, Some(true));
}

#[test]
fn the_configmap_holds_a_manifest_the_worker_accepts() {
    let j = job(STEPS);
    let c = build(&j);
    let text = &c.config_map.data.as_ref().unwrap()["streamjob.yaml"];
    let parsed = parse_job(text).unwrap();
    assert_eq!(parsed.spec, j.spec);
    assert_eq!(parsed.metadata.name.as_deref(), Some("wc"));
}

#[test]
fn pods_run_locked_down_with_token_probes_and_secrets() {
    let c = build(&job(&format!(
        "{STEPS}    - name: k\n      input: [n]\n      sink:\n        kafka:\n          bootstrapServers: k:9092\n          topic: t\n          secretProperties:\n            sasl.password: {{name: creds, key: pw}}\n  resources:\n    limits: {{cpu: '2', memory: 1Gi}}\n  podTemplate:\n    metadata: {{annotations: {{team: data}}}}\n    spec: {{nodeSelector: {{pool: streaming}}}}\n"
    )));
    let pod = c.stateful_set.spec.as_ref().unwrap().template.clone();
    let spec = pod.spec.as_ref().unwrap();
    let w = &spec.containers[0];
    let sc = w.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    let env = w.env.as_ref().unwrap();
    let token = env.iter().find(|e| e.name == "STREAMJOB_TOKEN").unwrap();
    let key = token
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!((key.name.as_str(), key.key.as_str()), ("wc-token", "token"));
    assert!(env.iter().any(|e| {
        e.name == "POD_NAME"
            && e.value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path
                == "metadata.name"
    }));
    assert_eq!(
        w.readiness_probe
            .as_ref()
            .unwrap()
            .grpc
            .as_ref()
            .unwrap()
            .service
            .as_deref(),
        Some("readiness")
    );
    let mounts = w.volume_mounts.as_ref().unwrap();
    assert!(
        mounts.iter().any(
            |m| m.mount_path == "/var/run/secrets/streamjob/creds" && m.read_only == Some(true)
        )
    );
    assert_eq!(
        w.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "1Gi"
    );
    // podTemplate merged in, generated fields kept
    assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "streaming");
    let annotations = pod.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
    assert_eq!(annotations["team"], "data");
    assert!(annotations.contains_key("streamjob.dev/spec-hash"));
}

#[test]
fn the_spec_hash_changes_with_the_spec_only() {
    let a = build(&job(STEPS));
    let mut j = job(STEPS);
    j.metadata.generation = Some(9);
    assert_eq!(template_hash(&a), template_hash(&build(&j)));
    let b = build(&job(
        &STEPS.replace("value.words()", "value.lower().words()")
    ));
    assert_ne!(template_hash(&a), template_hash(&b));
}

#[test]
fn a_pod_template_that_does_not_merge_is_an_error() {
    let j = job(&format!(
        "{STEPS}  podTemplate:\n    spec: {{containers: 7}}\n"
    ));
    let plan = to_logical_graph(&j).plan().unwrap();
    let err = resources::children(
        &j,
        &plan,
        &Defaults {
            worker_image: "x".into(),
            image_pull_policy: None,
            worker_resources: None,
        },
    )
    .unwrap_err();
    assert!(
        err.starts_with("spec.podTemplate: does not merge into a pod template"),
        "{err}"
    );
}

fn template_hash(c: &Children) -> String {
    c.stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["streamjob.dev/spec-hash"]
        .clone()
}

#[test]
fn operator_only_fields_neither_reach_the_workers_nor_roll_the_pods() {
    let ckpt = "  checkpointing: {intervalMs: 1000, directory: 'file:///ckpt'}\n";
    let plain = job(&format!("{ckpt}{STEPS}"));
    let operator_fields = job(&format!(
        "{ckpt}  state: suspended\n  upgradeMode: savepoint\n  savepointTriggerNonce: 3\n  restartNonce: 4\n  savepointOnDeletion: false\n{STEPS}"
    ));
    let (a, b) = (build(&plain), build(&operator_fields));
    assert_eq!(template_hash(&a), template_hash(&b));
    assert_eq!(a.config_map, b.config_map);
    let manifest = &b.config_map.data.as_ref().unwrap()["streamjob.yaml"];
    for field in resources::OPERATOR_ONLY_FIELDS {
        assert!(!manifest.contains(field), "{field} in {manifest}");
    }
    // What the workers read does roll them, initialSavepointPath included.
    let restore = job(&format!(
        "{ckpt}  initialSavepointPath: file:///sp/1\n{STEPS}"
    ));
    assert_ne!(template_hash(&a), template_hash(&build(&restore)));
}

#[test]
fn the_run_is_in_the_pod_environment_and_read_back_from_it() {
    let mut j = job(STEPS);
    j.metadata.uid = Some("6f1d2c3b-9a8e-4f00-b1c2-d3e4f5a6b7c8".into());
    assert_eq!(resources::run_id(&j), "wc-6f1d2c3b-3");
    let plan = to_logical_graph(&j).plan().unwrap();
    let defaults = Defaults {
        worker_image: "streamjob:test".into(),
        image_pull_policy: None,
        worker_resources: None,
    };
    let var = |c: &Children, name: &str| {
        container(c)
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.clone().unwrap())
    };
    // The first run: nothing to restore (the workers read initialSavepointPath themselves).
    let first = build(&j);
    assert_eq!(
        var(&first, "STREAMJOB_RUN_ID").as_deref(),
        Some("wc-6f1d2c3b-3")
    );
    assert_eq!(var(&first, "STREAMJOB_RESTORE_FROM"), None);
    assert_eq!(
        resources::Run::of(&first.stateful_set),
        Some(resources::Run::fresh(&j))
    );

    let run = resources::Run {
        id: "wc-6f1d2c3b-2".into(),
        restore_from: Some("file:///ckpt/savepoints/savepoint-7".into()),
        restart_nonce: Some(5),
    };
    let c = resources::children_for_run(&j, &plan, &defaults, &run).unwrap();
    assert_eq!(
        var(&c, "STREAMJOB_RUN_ID").as_deref(),
        Some("wc-6f1d2c3b-2")
    );
    assert_eq!(
        var(&c, "STREAMJOB_RESTORE_FROM").as_deref(),
        Some("file:///ckpt/savepoints/savepoint-7")
    );
    assert_eq!(resources::Run::of(&c.stateful_set), Some(run));
    let sts = c.stateful_set.spec.as_ref().unwrap();
    assert_eq!(
        sts.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("OnDelete")
    );
}

#[test]
fn spec_env_reaches_the_worker_container_but_not_the_config_map() {
    let j = job(&format!(
        "  env:\n    - {{name: AWS_ENDPOINT, value: 'http://minio:9000'}}\n    - name: AWS_SECRET_ACCESS_KEY\n      valueFrom: {{secretKeyRef: {{name: s3, key: secret}}}}\n{STEPS}"
    ));
    let c = build(&j);
    let env = container(&c).env.as_ref().unwrap();
    let endpoint = env.iter().find(|e| e.name == "AWS_ENDPOINT").unwrap();
    assert_eq!(endpoint.value.as_deref(), Some("http://minio:9000"));
    let secret = env
        .iter()
        .find(|e| e.name == "AWS_SECRET_ACCESS_KEY")
        .unwrap();
    assert_eq!(
        secret
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "s3"
    );
    let manifest = &c.config_map.data.as_ref().unwrap()["streamjob.yaml"];
    assert!(!manifest.contains("AWS_"), "{manifest}");
}

fn pod_spec(c: &Children) -> &k8s_openapi::api::core::v1::PodSpec {
    c.stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

#[test]
fn a_pod_template_that_sets_only_the_workers_resources_keeps_the_rest_of_it() {
    // As a JSON merge patch this replaced the whole container list: no image, args or env.
    let plain = build(&job(STEPS));
    let j = job(&format!(
        "{STEPS}  podTemplate:\n    spec:\n      containers:\n        - name: worker\n          resources: {{limits: {{cpu: '3'}}}}\n"
    ));
    let c = build(&j);
    let spec = pod_spec(&c);
    assert_eq!(spec.containers.len(), 1);
    let w = &spec.containers[0];
    let before = &pod_spec(&plain).containers[0];
    assert_eq!(w.image, before.image);
    assert_eq!(w.args, before.args);
    assert_eq!(w.env, before.env);
    assert_eq!(w.volume_mounts, before.volume_mounts);
    let r = w.resources.as_ref().unwrap();
    assert_eq!(r.limits.as_ref().unwrap()["cpu"].0, "3");
    // The memory the operator sets stays (a merge, not a replacement).
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "1Gi");
}

#[test]
fn a_sidecar_volume_and_env_var_are_added_by_name_beside_the_generated_ones() {
    let j = job(&format!(
        "{STEPS}  podTemplate:\n    spec:\n      containers:\n        - name: log-shipper\n          image: fluent-bit:3\n          volumeMounts: [{{name: tmp, mountPath: /logs}}]\n        - name: worker\n          env:\n            - {{name: STREAMJOB_LOG, value: debug}}\n            - {{name: EXTRA, value: '1'}}\n          volumeMounts: [{{name: cache, mountPath: /cache}}]\n      volumes:\n        - {{name: cache, emptyDir: {{}}}}\n        - {{name: tmp, $patch: delete}}\n        - {{name: tmp, emptyDir: {{medium: Memory}}}}\n"
    ));
    let c = build(&j);
    let spec = pod_spec(&c);
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["worker", "log-shipper"]);
    let w = &spec.containers[0];
    assert_eq!(w.image.as_deref(), Some("streamjob:test"));
    let env = w.env.as_ref().unwrap();
    let value = |n: &str| {
        env.iter()
            .find(|e| e.name == n)
            .and_then(|e| e.value.clone())
    };
    // Replaced by name in place, added at the end, the generated ones kept.
    assert_eq!(value("STREAMJOB_LOG").as_deref(), Some("debug"));
    assert_eq!(env.iter().filter(|e| e.name == "STREAMJOB_LOG").count(), 1);
    assert_eq!(env.last().unwrap().name, "EXTRA");
    assert!(env.iter().any(|e| e.name == "STREAMJOB_TOKEN"));
    let mounts: Vec<&str> = w
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, ["/etc/streamjob", "/tmp", "/cache"]);
    let volumes = spec.volumes.as_ref().unwrap();
    let vnames: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    // `$patch: delete` removed the generated tmp volume; the next element added it anew.
    assert_eq!(vnames, ["spec", "cache", "tmp"]);
    let tmp = volumes.iter().find(|v| v.name == "tmp").unwrap();
    assert_eq!(
        tmp.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
}

#[test]
fn a_pod_template_cannot_remove_the_worker_container() {
    let j = job(&format!(
        "{STEPS}  podTemplate:\n    spec:\n      containers: [{{name: worker, $patch: delete}}]\n"
    ));
    let plan = to_logical_graph(&j).plan().unwrap();
    let err = resources::children(
        &j,
        &plan,
        &Defaults {
            worker_image: "x".into(),
            image_pull_policy: None,
            worker_resources: None,
        },
    )
    .unwrap_err();
    assert_eq!(err, "spec.podTemplate: removes the `worker` container");
}

fn memory(c: &Children) -> (String, String) {
    let r = container(c).resources.as_ref().unwrap();
    (
        r.requests.as_ref().unwrap()["memory"].0.clone(),
        r.limits.as_ref().unwrap()["memory"].0.clone(),
    )
}

#[test]
fn worker_memory_always_has_a_request_and_a_limit() {
    // Nothing set anywhere: the operator's default, request = limit, and a CPU request.
    let c = build(&job(STEPS));
    assert_eq!(memory(&c), ("1Gi".into(), "1Gi".into()));
    let r = container(&c).resources.as_ref().unwrap();
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "500m");
    assert!(!r.limits.as_ref().unwrap().contains_key("cpu"));
    // A request alone is also the limit; a limit alone also the request.
    let c = build(&job(&format!(
        "{STEPS}  resources: {{requests: {{memory: 3Gi}}}}\n"
    )));
    assert_eq!(memory(&c), ("3Gi".into(), "3Gi".into()));
    let c = build(&job(&format!(
        "{STEPS}  resources: {{limits: {{memory: 2Gi}}}}\n"
    )));
    assert_eq!(memory(&c), ("2Gi".into(), "2Gi".into()));
    // Both given: kept as they are.
    let c = build(&job(&format!(
        "{STEPS}  resources: {{requests: {{memory: 1Gi}}, limits: {{memory: 4Gi}}}}\n"
    )));
    assert_eq!(memory(&c), ("1Gi".into(), "4Gi".into()));
}

#[test]
fn the_template_hash_label_follows_what_the_operator_renders() {
    let hash = |c: &Children| {
        resources::template_hash_of(&c.stateful_set)
            .unwrap()
            .to_string()
    };
    let a = build(&job(STEPS));
    assert_eq!(hash(&a), hash(&build(&job(STEPS))));
    let b = build(&job(&format!("{STEPS}  image: other:1\n")));
    assert_ne!(hash(&a), hash(&b));
    // The selector does not include it: pods of an older template stay the StatefulSet's.
    let selector = a
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .clone()
        .unwrap();
    assert!(!selector.contains_key(resources::TEMPLATE_HASH_LABEL));
}
