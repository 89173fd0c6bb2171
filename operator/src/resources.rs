//! The objects a StreamJob owns, built from its spec as plain data (no API calls), so they can
//! be tested and validated against the Kubernetes schemas offline.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, GRPCAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::ResourceExt;
use streamjob_crds::plan::PhysicalPlan;
use streamjob_crds::spec::{JobState, StreamJob};

/// Port of the worker's gRPC exchange (and its gRPC health service).
pub const EXCHANGE_PORT: i32 = 6121;
/// Every worker's HTTP port: /metrics, /healthz, /readyz, /api/summary, worker 0's job page
/// (the worker's `--metrics-port` default).
pub const METRICS_PORT: i32 = 9249;

/// `host:port` of worker `i`'s metrics port through the job's headless Service.
pub fn worker_metrics_address(job: &str, namespace: &str, i: u32) -> String {
    format!(
        "{}-{i}.{}.{namespace}.svc:{METRICS_PORT}",
        statefulset_name(job),
        service_name(job)
    )
}
/// Where the worker reads its job spec.
pub const SPEC_DIR: &str = "/etc/streamjob";
pub const SPEC_FILE: &str = "streamjob.yaml";
/// Where Secrets referenced by `secretProperties` are mounted, one directory per Secret.
pub const SECRETS_DIR: &str = "/var/run/secrets/streamjob";
/// Annotation on the pod template that changes with the spec, so a spec change rolls the pods.
pub const SPEC_HASH_ANNOTATION: &str = "streamjob.dev/spec-hash";
/// Annotation on the pod template holding the `restartNonce` the pods were started for.
pub const RESTART_NONCE_ANNOTATION: &str = "streamjob.dev/restart-nonce";
/// Label on the pod template: a hash of the template the operator rendered.
pub const TEMPLATE_HASH_LABEL: &str = "streamjob.dev/template-hash";
/// Memory of a worker container when neither the job nor the operator sets any: request and
/// limit alike, so a worker that outgrows it is OOM-killed at a known size rather than when
/// its node runs short.
pub const DEFAULT_WORKER_MEMORY: &str = "1Gi";
/// CPU request of a worker container when neither the job nor the operator sets any (no
/// limit: throttling a worker stalls its peers' exchanges).
pub const DEFAULT_WORKER_CPU: &str = "500m";
/// Worker environment: the run's checkpoint namespace and the snapshot it starts from.
pub const RUN_ID_ENV: &str = "STREAMJOB_RUN_ID";
pub const RESTORE_FROM_ENV: &str = "STREAMJOB_RESTORE_FROM";
/// UID the worker image runs as (distroless nonroot).
const WORKER_UID: i64 = 65532;

/// Names of a job's children.
pub fn statefulset_name(job: &str) -> String {
    format!("{job}-worker")
}
pub fn service_name(job: &str) -> String {
    format!("{job}-workers")
}
pub fn configmap_name(job: &str) -> String {
    format!("{job}-spec")
}
pub fn token_secret_name(job: &str) -> String {
    format!("{job}-token")
}

/// Settings of the operator that shape the children.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Worker image when the spec sets none.
    pub worker_image: String,
    pub image_pull_policy: Option<String>,
    /// Worker container resources for jobs that set no `spec.resources`.
    pub worker_resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

/// Everything a job owns, except the token Secret (created once, never re-applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
    /// Only when the job runs on two or more workers.
    pub pdb: Option<PodDisruptionBudget>,
    /// Workers the plan needs (when running).
    pub workers: i32,
}

pub fn labels(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "streamjob".into()),
        ("app.kubernetes.io/instance".into(), job.into()),
        ("app.kubernetes.io/component".into(), "worker".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "streamjob-operator".into(),
        ),
    ])
}

/// The label selector of a job's worker pods, as a string (`status.selector`, the scale
/// subresource's selector).
pub fn selector_string(job: &str) -> String {
    selector(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The label selector of a job's worker pods.
pub fn selector(job: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "streamjob".into()),
        ("app.kubernetes.io/instance".into(), job.into()),
    ])
}

fn owner(job: &StreamJob) -> OwnerReference {
    job.controller_owner_ref(&())
        .expect("a StreamJob from the API server has a name and uid")
}

fn meta(job: &StreamJob, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: job.namespace(),
        labels: Some(labels(&job.name_any())),
        owner_references: Some(vec![owner(job)]),
        ..Default::default()
    }
}

/// Spec fields only the operator acts on. They are left out of the manifest the workers read
/// (and so out of [`spec_hash`]): changing them neither rolls the pods nor makes a pod that
/// Kubernetes restarts disagree with its peers about the spec (the exchange handshake compares
/// spec hashes). `initialSavepointPath` stays: the workers read it on the first run.
pub const OPERATOR_ONLY_FIELDS: [&str; 6] = [
    "state",
    "upgradeMode",
    "savepointTriggerNonce",
    "restartNonce",
    "savepointOnDeletion",
    // Set on the container; values may be sensitive and do not belong in the ConfigMap.
    "env",
];

/// The spec as the workers see it: without [`OPERATOR_ONLY_FIELDS`].
fn worker_spec(job: &StreamJob) -> serde_json::Value {
    let mut spec = serde_json::to_value(&job.spec).expect("specs serialise");
    if let Some(fields) = spec.as_object_mut() {
        for f in OPERATOR_ONLY_FIELDS {
            fields.remove(f);
        }
    }
    spec
}

/// The manifest the workers read: the job with only the fields `streamjob worker` needs.
pub fn worker_manifest(job: &StreamJob) -> String {
    let doc = serde_json::json!({
        "apiVersion": "streamjob.dev/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": job.name_any(), "namespace": job.namespace()},
        "spec": worker_spec(job),
    });
    serde_yaml::to_string(&doc).expect("specs serialise")
}

/// Hash of what the workers run; it changes exactly when the pods must be replaced.
pub fn spec_hash(job: &StreamJob) -> String {
    let json = serde_json::to_vec(&worker_spec(job)).expect("specs serialise");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
}

/// Which checkpoints a deployment of the workers writes and where it starts from (the
/// `STREAMJOB_RUN_ID` / `STREAMJOB_RESTORE_FROM` contract with the workers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Checkpoint namespace: checkpoints go to `<checkpointing.directory>/<id>/chk-<n>`, and
    /// pods that Kubernetes restarts with the same id restore the latest of them.
    pub id: String,
    /// Snapshot (or run directory) to start from while the run has no complete checkpoint.
    pub restore_from: Option<String>,
    /// The `restartNonce` the pods were started for (a pod template annotation, so a new
    /// nonce replaces the pods even when the run stays the same).
    pub restart_nonce: Option<i64>,
}

/// The run id of a deployment started at the job's current generation:
/// `<name>-<first 8 characters of the uid>-<generation>`. Deterministic, so a reconcile that
/// is repeated (or an operator restarted mid-upgrade) picks the same one; unique per job
/// incarnation, so a job deleted and created again under the same name (or a job of the same
/// name in another namespace sharing the checkpoint directory) never restores the old one's
/// checkpoints. `restartNonce` needs no part of its own: changing it bumps the generation.
pub fn run_id(job: &StreamJob) -> String {
    let uid: String = job
        .uid()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!(
        "{}-{uid}-{}",
        job.name_any(),
        job.metadata.generation.unwrap_or(0)
    )
}

impl Run {
    /// A fresh run at the job's current generation, with nothing to restore.
    pub fn fresh(job: &StreamJob) -> Self {
        Run {
            id: run_id(job),
            restore_from: None,
            restart_nonce: job.spec.restart_nonce,
        }
    }

    /// The run a StatefulSet's pod template describes (`None` when it names none: a
    /// StatefulSet of an operator without runs).
    pub fn of(sts: &StatefulSet) -> Option<Run> {
        let template = &sts.spec.as_ref()?.template;
        let env = template
            .spec
            .as_ref()?
            .containers
            .iter()
            .find(|c| c.name == "worker")?
            .env
            .as_deref()
            .unwrap_or_default();
        let var = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        let restart_nonce = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(RESTART_NONCE_ANNOTATION))
            .and_then(|v| v.parse().ok());
        Some(Run {
            id: var(RUN_ID_ENV)?,
            restore_from: var(RESTORE_FROM_ENV),
            restart_nonce,
        })
    }
}

/// Secrets referenced by the job's Kafka `secretProperties`.
pub fn referenced_secrets(job: &StreamJob) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    let sinks = job
        .spec
        .steps
        .iter()
        .filter_map(|s| s.sink.as_ref())
        .chain(job.spec.dead_letter.as_ref());
    for sink in sinks {
        if let Some(k) = &sink.kafka {
            names.extend(k.secret_properties.values().map(|r| r.name.clone()));
        }
    }
    for s in job.spec.steps.iter().filter_map(|s| s.source.as_ref()) {
        if let Some(k) = &s.kafka {
            names.extend(k.secret_properties.values().map(|r| r.name.clone()));
        }
    }
    names.into_iter().collect()
}

/// Builds the children of a valid job with `plan` for its first run (what `render` prints).
/// Fails only on a `podTemplate` that does not merge into a pod template.
pub fn children(
    job: &StreamJob,
    plan: &PhysicalPlan,
    defaults: &Defaults,
) -> Result<Children, String> {
    children_for_run(job, plan, defaults, &Run::fresh(job))
}

/// Builds the children of a valid job with `plan` whose pods start `run`.
pub fn children_for_run(
    job: &StreamJob,
    plan: &PhysicalPlan,
    defaults: &Defaults,
    run: &Run,
) -> Result<Children, String> {
    let name = job.name_any();
    let slots = job.spec.slots_per_worker.max(1);
    let workers = plan.workers_needed(slots) as i32;
    let replicas = match job.spec.state {
        JobState::Running => workers,
        JobState::Suspended => 0,
    };

    let config_map = ConfigMap {
        metadata: meta(job, configmap_name(&name)),
        data: Some(BTreeMap::from([(
            SPEC_FILE.to_string(),
            worker_manifest(job),
        )])),
        ..Default::default()
    };

    let service = Service {
        metadata: meta(job, service_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Peers must resolve each other before they are ready: the exchange connects
            // during startup.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector(&name)),
            ports: Some(vec![ServicePort {
                name: Some("exchange".into()),
                port: EXCHANGE_PORT,
                target_port: Some(IntOrString::Int(EXCHANGE_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    };
    let mut volumes = vec![
        Volume {
            name: "spec".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: configmap_name(&name),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: "spec".into(),
            mount_path: SPEC_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    for (i, secret) in referenced_secrets(job).into_iter().enumerate() {
        let volume = format!("secret-{i}");
        mounts.push(VolumeMount {
            name: volume.clone(),
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: volume,
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let probe = |service: &str, period: i32, failures: i32| Probe {
        grpc: Some(GRPCAction {
            port: EXCHANGE_PORT,
            service: Some(service.into()),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let container = Container {
        name: "worker".into(),
        image: Some(
            job.spec
                .image
                .clone()
                .unwrap_or_else(|| defaults.worker_image.clone()),
        ),
        image_pull_policy: defaults.image_pull_policy.clone(),
        args: Some(vec![
            "worker".into(),
            format!("{SPEC_DIR}/{SPEC_FILE}"),
            "--workers".into(),
            workers.to_string(),
            "--slots".into(),
            slots.to_string(),
            "--port".into(),
            EXCHANGE_PORT.to_string(),
            "--peer-pattern".into(),
            "{job}-worker-{i}.{job}-workers.{namespace}.svc:{port}".into(),
            "--idle-after-finish".into(),
        ]),
        env: Some(
            vec![
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                EnvVar {
                    name: "STREAMJOB_TOKEN".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: token_secret_name(&name),
                            key: "token".into(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                },
                env("STREAMJOB_SECRETS_DIR", SECRETS_DIR),
                env("STREAMJOB_LOG", "info"),
                env(RUN_ID_ENV, &run.id),
            ]
            .into_iter()
            .chain(
                run.restore_from
                    .as_deref()
                    .map(|r| env(RESTORE_FROM_ENV, r)),
            )
            .chain(job.spec.env.iter().cloned())
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("exchange".into()),
                container_port: EXCHANGE_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        liveness_probe: Some(probe("liveness", 10, 3)),
        readiness_probe: Some(probe("readiness", 5, 2)),
        resources: Some(worker_resources(job, defaults)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels(&name)),
            annotations: Some(
                [
                    (SPEC_HASH_ANNOTATION.to_string(), spec_hash(job)),
                    // Prometheus' conventional pod discovery.
                    ("prometheus.io/scrape".to_string(), "true".to_string()),
                    ("prometheus.io/port".to_string(), METRICS_PORT.to_string()),
                    ("prometheus.io/path".to_string(), "/metrics".to_string()),
                ]
                .into_iter()
                .chain(
                    run.restart_nonce
                        .map(|n| (RESTART_NONCE_ANNOTATION.to_string(), n.to_string())),
                )
                .collect(),
            ),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(30),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(WORKER_UID),
                run_as_group: Some(WORKER_UID),
                fs_group: Some(WORKER_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    if let Some(overrides) = &job.spec.pod_template {
        template = crate::merge::merged(&template, overrides)?;
    }
    // What the operator wants the pods to be: pods without this hash are replaced (see
    // controller::children::replace_outdated_pods), pods with it never are.
    let hash = {
        let json = serde_json::to_vec(&template).expect("pod templates serialise");
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
    };
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH_LABEL.into(), hash);
    let stateful_set = StatefulSet {
        metadata: meta(job, statefulset_name(&name)),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(service_name(&name)),
            pod_management_policy: Some("Parallel".into()),
            // The workers of two pod templates cannot run one job together (the exchange
            // handshake compares the spec), so a rolling update would wait forever for its
            // first new pod to become ready. The operator replaces all the pods at once
            // instead (controller::replace_outdated_pods).
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(selector(&name)),
                match_expressions: None,
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    };
    let pdb = (replicas >= 2).then(|| PodDisruptionBudget {
        metadata: meta(job, statefulset_name(&name)),
        spec: Some(PodDisruptionBudgetSpec {
            // A worker that goes away stops the whole job: let voluntary disruptions take
            // one pod at a time.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&name)),
                match_expressions: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    Ok(Children {
        config_map,
        service,
        stateful_set,
        pdb,
        workers,
    })
}

/// The job's exchange token Secret (created once; re-applying would change the token).
pub fn token_secret(job: &StreamJob, token: &str) -> Secret {
    Secret {
        metadata: meta(job, token_secret_name(&job.name_any())),
        string_data: Some(BTreeMap::from([("token".to_string(), token.to_string())])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The template hash label of a StatefulSet's pod template.
pub fn template_hash_of(sts: &StatefulSet) -> Option<&str> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(TEMPLATE_HASH_LABEL)
        .map(String::as_str)
}

/// The worker container's resources: the job's, else the operator's default, else
/// [`DEFAULT_WORKER_CPU`] and [`DEFAULT_WORKER_MEMORY`]; memory always gets a request and a
/// limit (a request alone also becomes the limit, as a limit alone becomes the request in
/// Kubernetes), so the memory a worker may use is known and its pod is not evicted first.
pub fn worker_resources(job: &StreamJob, defaults: &Defaults) -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let mut r = job
        .spec
        .resources
        .clone()
        .or_else(|| defaults.worker_resources.clone())
        .unwrap_or_else(|| ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_string(),
                Quantity(DEFAULT_WORKER_CPU.into()),
            )])),
            ..Default::default()
        });
    let requested = r.requests.as_ref().and_then(|m| m.get("memory")).cloned();
    let limited = r.limits.as_ref().and_then(|m| m.get("memory")).cloned();
    let (request, limit) = match (requested, limited) {
        (Some(q), None) => (q.clone(), q),
        (None, Some(l)) => (l.clone(), l),
        (Some(q), Some(l)) => (q, l),
        (None, None) => (
            Quantity(DEFAULT_WORKER_MEMORY.into()),
            Quantity(DEFAULT_WORKER_MEMORY.into()),
        ),
    };
    r.requests
        .get_or_insert_with(Default::default)
        .insert("memory".into(), request);
    r.limits
        .get_or_insert_with(Default::default)
        .insert("memory".into(), limit);
    r
}

/// The children as a multi-document YAML stream (what `streamjob-operator render` prints),
/// each with apiVersion and kind.
pub fn to_yaml(c: &Children, token: Option<&Secret>) -> String {
    fn doc<K: Resource<DynamicType = ()> + serde::Serialize>(k: &K) -> String {
        let mut v = serde_json::to_value(k).expect("objects serialise");
        v["apiVersion"] = K::api_version(&()).into();
        v["kind"] = K::kind(&()).into();
        serde_yaml::to_string(&v).expect("values serialise")
    }
    let mut docs = vec![doc(&c.config_map), doc(&c.service), doc(&c.stateful_set)];
    if let Some(p) = &c.pdb {
        docs.push(doc(p));
    }
    if let Some(t) = token {
        docs.push(doc(t));
    }
    docs.join("---\n")
}
