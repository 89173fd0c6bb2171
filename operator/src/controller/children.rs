//! Writing what [`crate::resources`] builds: server-side apply of the children, the
//! PodDisruptionBudget, the token Secret, and the replacement of pods of an older template.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use streamjob_crds::spec::StreamJob;
use tracing::info;

use super::context::{Context, Error, MANAGER};
use crate::resources::{self, Children};

/// Deletes the worker pods of an older pod template of ours, all at once, so the StatefulSet
/// (`updateStrategy: OnDelete`) recreates them from the current one. "Older" is judged by the
/// template hash label the operator renders ([`resources::TEMPLATE_HASH_LABEL`]), not by the
/// StatefulSet's revisions: an edit by someone else changes the revision but not what the
/// operator wants, and must not restart the job. Only once the StatefulSet controller has seen
/// the current template: a pod deleted earlier could come back old.
pub(crate) async fn replace_outdated_pods(
    ctx: &Context,
    ns: &str,
    job: &str,
    wanted: &StatefulSet,
    sts: &StatefulSet,
) -> Result<(), Error> {
    let Some(status) = &sts.status else {
        return Ok(());
    };
    let current = status.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let outdated = status.replicas > status.updated_replicas.unwrap_or(0);
    let Some(hash) = resources::template_hash_of(wanted).filter(|_| current && outdated) else {
        return Ok(());
    };
    let mut selector: Vec<String> = resources::selector(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    selector.push(format!("{}!={hash}", resources::TEMPLATE_HASH_LABEL));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let deleted = pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&selector.join(",")),
        )
        .await?;
    // A list of the pods deleted, or a Status when the server deleted them in the background.
    let names: Vec<String> = deleted
        .left()
        .map(|list| list.items.iter().map(|p| p.name_any()).collect())
        .unwrap_or_default();
    if !names.is_empty() {
        info!(pods = ?names, template = hash, "replaced worker pods of an older template");
    }
    Ok(())
}

/// Container states that keep a pod from running, with their cause.
const STUCK: [&str; 9] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "PreCreateHookError",
];

/// Why worker pods cannot be created or started: the waiting reasons of their containers
/// (image pull errors, crash loops, bad configuration), unschedulable pods, and, when pods are
/// missing, the StatefulSet's latest FailedCreate event. At most three causes, one line.
pub(crate) async fn deployment_problems(
    ctx: &Context,
    ns: &str,
    job: &str,
    desired: i32,
    sts: &StatefulSet,
) -> Result<Option<String>, Error> {
    let selector: Vec<String> = resources::selector(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut list = pods
        .list(&ListParams::default().labels(&selector.join(",")))
        .await?
        .items;
    list.sort_by_key(|p| p.name_any());
    let mut causes = Vec::new();
    for pod in &list {
        let Some(status) = &pod.status else { continue };
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for c in containers {
            let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.as_deref().unwrap_or("");
            if STUCK.contains(&reason) {
                let message = waiting.message.as_deref().unwrap_or("").trim();
                let last_exit = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| format!(" (last exit code {})", t.exit_code))
                    .unwrap_or_default();
                causes.push(format!(
                    "pod {}: container {}: {reason}{last_exit}{}",
                    pod.name_any(),
                    c.name,
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    }
                ));
            }
        }
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            causes.push(format!(
                "pod {}: Unschedulable: {}",
                pod.name_any(),
                c.message.as_deref().unwrap_or("")
            ));
        }
    }
    if (list.len() as i32) < desired {
        let events: Api<CoreEvent> = Api::namespaced(ctx.client.clone(), ns);
        let fields = format!(
            "involvedObject.kind=StatefulSet,involvedObject.name={},reason=FailedCreate",
            sts.name_any()
        );
        let mut failed = events
            .list(&ListParams::default().fields(&fields))
            .await?
            .items;
        failed.sort_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        });
        if let Some(e) = failed.last() {
            causes.insert(
                0,
                format!(
                    "StatefulSet {}: FailedCreate: {}",
                    sts.name_any(),
                    e.message.as_deref().unwrap_or("")
                ),
            );
        }
    }
    let more = causes.len().saturating_sub(3);
    causes.truncate(3);
    if more > 0 {
        causes.push(format!("and {more} more"));
    }
    Ok((!causes.is_empty()).then(|| causes.join("; ")))
}

/// Server-side apply of a child, returning what the server stored.
pub(crate) async fn apply<K>(ctx: &Context, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = obj.meta().name.clone().expect("children are named");
    let mut obj = obj.clone();
    // Apply bodies need apiVersion and kind.
    let value = {
        let mut v = serde_json::to_value(&mut obj).expect("objects serialise");
        v["apiVersion"] = K::api_version(&()).into();
        v["kind"] = K::kind(&()).into();
        v
    };
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&value),
    )
    .await
    .map_err(|e| rejected(K::kind(&()).as_ref(), &name, e))
}

/// An API server's refusal of child `kind`/`name` as [`Error::ChildRejected`]; other errors
/// (the server did not answer) stay API errors.
fn rejected(kind: &str, name: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) => Error::ChildRejected {
            kind: kind.to_string(),
            name: name.to_string(),
            message: format!("{} ({} {})", s.message, s.code, s.reason),
        },
        e => Error::Kube(e),
    }
}

pub(crate) async fn sync_pdb(
    ctx: &Context,
    ns: &str,
    job: &StreamJob,
    c: &Children,
) -> Result<(), Error> {
    match &c.pdb {
        Some(pdb) => {
            apply(ctx, ns, pdb).await?;
        }
        None => {
            let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), ns);
            let name = resources::statefulset_name(&job.name_any());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Creates the job's exchange token Secret once (a random 128-bit token) and returns the
/// token (the bearer of the job control calls; empty if the Secret holds none).
pub(crate) async fn ensure_token(
    ctx: &Context,
    job: &StreamJob,
    ns: &str,
) -> Result<String, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = resources::token_secret_name(&job.name_any());
    if let Some(secret) = api.get_opt(&name).await? {
        return Ok(token_of(&secret).unwrap_or_default());
    }
    let token = random_token().map_err(Error::Token)?;
    match api
        .create(
            &PostParams::default(),
            &resources::token_secret(job, &token),
        )
        .await
    {
        Ok(_) => Ok(token),
        // Another reconcile created it first.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(api
            .get_opt(&name)
            .await?
            .and_then(|s| token_of(&s))
            .unwrap_or_default()),
        Err(e) => Err(rejected("Secret", &name, e)),
    }
}

/// The token in a job's Secret.
pub(crate) fn token_of(secret: &Secret) -> Option<String> {
    let data = secret.data.as_ref().and_then(|d| d.get("token"));
    match data {
        Some(bytes) => String::from_utf8(bytes.0.clone()).ok(),
        None => secret
            .string_data
            .as_ref()
            .and_then(|d| d.get("token").cloned()),
    }
}

/// 128 random bits from the OS (getrandom), as 32 hex digits.
pub(crate) fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
