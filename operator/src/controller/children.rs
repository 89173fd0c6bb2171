//! Writing what [`crate::resources`] builds: server-side apply of the children, the
//! PodDisruptionBudget, the token Secret, and the replacement of pods of an older template.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use streamjob_crds::spec::StreamJob;
use tracing::info;

use super::context::{Context, Error, MANAGER};
use crate::resources::{self, Children};

/// Deletes the worker pods of an older pod template, all at once, so the StatefulSet
/// (`updateStrategy: OnDelete`) recreates them from the current one. Only once the StatefulSet
/// controller has seen the current template: a pod deleted earlier could come back old.
pub(crate) async fn replace_outdated_pods(
    ctx: &Context,
    ns: &str,
    job: &str,
    sts: &StatefulSet,
) -> Result<(), Error> {
    let Some(status) = &sts.status else {
        return Ok(());
    };
    let current = status.observed_generation.unwrap_or(0) >= sts.metadata.generation.unwrap_or(0);
    let outdated = status.replicas > status.updated_replicas.unwrap_or(0);
    let Some(revision) = status
        .update_revision
        .as_deref()
        .filter(|_| current && outdated)
    else {
        return Ok(());
    };
    let mut selector: Vec<String> = resources::selector(job)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    selector.push(format!("controller-revision-hash!={revision}"));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(&selector.join(",")),
    )
    .await?;
    info!(
        outdated = status.replicas - status.updated_replicas.unwrap_or(0),
        revision, "replacing worker pods of an older template"
    );
    Ok(())
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
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?)
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
        Err(e) => Err(e.into()),
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

pub(crate) fn random_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
