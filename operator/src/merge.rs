//! The `podTemplate` merge: a user's partial pod template over the generated one, the way a
//! strategic merge patch (what `kubectl patch` does to pod templates) would merge it.
//! Kubernetes' strategic merge patch lives in Go (apimachinery), and no Rust crate implements
//! it; a pod template needs only a few of its merge keys.

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// `base` with `overrides` merged in the way of a strategic merge patch (what `kubectl patch`
/// does to pod templates): maps merge, `null` removes a key, lists of named things
/// (containers, initContainers, volumes, env, imagePullSecrets) merge by `name`, volumeMounts
/// by `mountPath` and ports by `containerPort`, and an element with `$patch: delete` removes
/// its match; other lists are replaced. So a podTemplate that sets only the `worker`
/// container's resources keeps its image, args and env, and a sidecar is added beside it.
pub fn merged(
    base: &PodTemplateSpec,
    overrides: &serde_json::Value,
) -> Result<PodTemplateSpec, String> {
    let mut doc = serde_json::to_value(base).expect("pod templates serialise");
    strategic_merge(&mut doc, overrides);
    let template: PodTemplateSpec = serde_json::from_value(doc)
        .map_err(|e| format!("spec.podTemplate: does not merge into a pod template: {e}"))?;
    let has_worker = template
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == "worker"));
    match has_worker {
        true => Ok(template),
        false => Err("spec.podTemplate: removes the `worker` container".into()),
    }
}

/// The key that identifies an element of list `field` in a strategic merge patch.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        _ => None,
    }
}

fn strategic_merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                match (t.get_mut(k), v, merge_key(k)) {
                    (Some(Value::Array(items)), Value::Array(patches), Some(key)) => {
                        merge_list(items, patches, key)
                    }
                    (Some(existing), _, _) => strategic_merge(existing, v),
                    (None, _, _) => {
                        let mut fresh = Value::Null;
                        strategic_merge(&mut fresh, v);
                        t.insert(k.clone(), fresh);
                    }
                }
            }
        }
        (t, p) => *t = without_directives(p),
    }
}

/// A patch value as plain data (no `$patch` elements).
fn without_directives(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| x.get("$patch").is_none())
                .map(without_directives)
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_list(items: &mut Vec<serde_json::Value>, patches: &[serde_json::Value], key: &str) {
    for p in patches {
        let id = p.get(key).filter(|id| !id.is_null());
        let at = id.and_then(|id| items.iter().position(|x| x.get(key) == Some(id)));
        let delete = p.get("$patch").and_then(|d| d.as_str()) == Some("delete");
        match (at, delete) {
            (Some(i), true) => {
                items.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut items[i], p),
            (None, false) => items.push(without_directives(p)),
        }
    }
}
